"""Fetch the recent raw bars a run needs from the configured source, with their provenance."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from marketdata import calendar as mcal
from marketdata.alpaca import AlpacaBarSource, credentials_from_env, fetch_with_fallback
from marketdata.files import read_bars_file
from marketdata.frame import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecentBars:
    frame: pd.DataFrame         # canonical raw bars (may include bars not closed by now; preparation drops them)
    now: pd.Timestamp           # the run's "now": the clock, --asof, or the end of a bars file
    data_asof: pd.Timestamp     # where the data is complete: now, or 15 minutes earlier for delayed SIP
    provenance: dict[str, Any]  # source, feed, delay, file


def fetch_recent_bars(source: str, symbol: str, now: pd.Timestamp | None, days: int, rth: bool, *,
                      csv: str | None = None, csv_tz: str = "auto", csv_label: str = "auto", feed: str = "iex",
                      sip_fallback: str = "iex", environ: Mapping[str, str] | None = None,
                      url_override: str | None = None) -> RecentBars:
    """The raw bars of the last `days` sessions up to `now` (live) or a replayed instant.

    `now` None means the clock for Alpaca and, for a bars file, the close of its last bar (a replay of the
    file's end).
    """
    if source == "csv":
        frame = read_bars_file(csv, tz=csv_tz, label=csv_label)
        if now is None:
            if frame.empty:
                raise DataError(f"bars file {csv} holds no bars")
            now = frame.index[-1] + pd.Timedelta(minutes=1)
        return RecentBars(frame, now, now, {"source": "csv", "file": os.path.abspath(str(csv)), "feed": None,
                                            "delayed": False})
    now = pd.Timestamp.now(tz="UTC").floor("s") if now is None else now
    sessions = mcal.recent_sessions(now, days, rth)
    if not sessions:
        raise DataError(f"the calendar has no session before {now.isoformat()}")
    start = mcal.session_window(sessions[0], rth)[0]
    env = os.environ if environ is None else environ
    credentials = credentials_from_env(env)
    if credentials is None:
        raise DataError("no Alpaca keys: set ALPACA_KEY_ID and ALPACA_SECRET_KEY (or APCA_API_KEY_ID and "
                        "APCA_API_SECRET_KEY), or use --source csv --csv FILE")
    client = AlpacaBarSource(credentials.key_id, credentials.secret_key, feed=feed, url_override=url_override)
    fetched = fetch_with_fallback(client, symbol, start, now, now, policy=sip_fallback)
    return RecentBars(fetched.frame, now, fetched.asof, {"source": "alpaca", **fetched.provenance()})


def range_note(frame: pd.DataFrame, now: pd.Timestamp, csv: str | None) -> str | None:
    """When a replay's instant lies outside the bars file, a sentence naming the file's range (UTC and New York),
    for the line that says why nothing was forecast; None inside it."""
    if frame.empty:
        return None
    first, last = frame.index[0], frame.index[-1]
    if first <= now <= last + pd.Timedelta(minutes=1):
        return None
    where = "before the first bar" if now < first else "after the last bar"
    from marketdata.stamps import log_stamp

    return (f"--asof {log_stamp(now)} is {where} of {csv}, which covers {log_stamp(first)} .. {log_stamp(last)} "
            "(bar starts)")

