"""Fetch the recent raw bars a run needs from the configured source, with their provenance.

A process that runs many forecasts (the --warm worker) passes a BarCache: it keeps the bars it fetched and asks
Alpaca only for the minutes since its last request (a few minutes before, again, as Alpaca may still revise a
just-closed bar), and rereads a bars file only when the file changed. What it returns is what a fetch without
it returns; preparation (closed bars, gap fills, bad bars) is the same code after it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from marketdata import calendar as mcal
from marketdata.alpaca import AlpacaBarSource, FetchResult, credentials_from_env, fetch_with_fallback
from marketdata.files import read_bars_file
from marketdata.frame import DataError, canonical

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
                      url_override: str | None = None, cache: BarCache | None = None) -> RecentBars:
    """The raw bars of the last `days` sessions up to `now` (live) or a replayed instant.

    `now` None means the clock for Alpaca and, for a bars file, the close of its last bar (a replay of the
    file's end). ``cache`` keeps bars between calls of one process (see BarCache).
    """
    if source == "csv":
        frame = (read_bars_file(csv, tz=csv_tz, label=csv_label, symbol=symbol) if cache is None
                 else cache.file(csv, csv_tz, csv_label, symbol))
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
    fetched = (fetch_with_fallback(client, symbol, start, now, now, policy=sip_fallback) if cache is None
               else cache.alpaca(client, symbol, start, now, sip_fallback))
    return RecentBars(fetched.frame, now, fetched.asof, {"source": "alpaca", **fetched.provenance()})


REFETCH = pd.Timedelta(minutes=5)  # minutes before the last request's end that are asked for again


@dataclass
class _Held:
    start: pd.Timestamp      # the held bars begin at the window start of that request
    complete: pd.Timestamp   # ...and are complete up to here (the request's now, or the delayed SIP cut)
    frame: pd.DataFrame
    feed: str
    delayed: bool


class BarCache:
    """Bars kept between the forecasts of one process: per Alpaca symbol, feed, policy, endpoint and key id the
    bars of the last request; per bars file its frame while the file is unchanged. ``requests`` counts the Alpaca
    fetches made (each may page)."""

    def __init__(self) -> None:
        self._alpaca: dict[tuple, _Held] = {}
        self._files: dict[tuple, pd.DataFrame] = {}
        self.requests = 0

    def file(self, path: str | None, tz: str, label: str, symbol: str | None = None) -> pd.DataFrame:
        try:
            st = os.stat(str(path))
            key = (os.path.abspath(str(path)), st.st_size, st.st_mtime_ns, st.st_ino, tz, label, symbol)
        except (OSError, TypeError):
            return read_bars_file(path, tz=tz, label=label, symbol=symbol)  # its own error for an odd path
        if key not in self._files:
            self._files = {key: read_bars_file(path, tz=tz, label=label, symbol=symbol)}  # one file is enough
        return self._files[key]

    def alpaca(self, client: AlpacaBarSource, symbol: str, start: pd.Timestamp, now: pd.Timestamp,
               policy: str) -> FetchResult:
        """fetch_with_fallback(client, symbol, start, now, now, policy), from the held bars and a request for
        the minutes after them (a whole request when nothing usable is held: another window start or a clock
        that went back, or the fallback's feed changed)."""
        key = (symbol, client.feed, policy, client.url_override, client.credentials.key_id)
        held = self._alpaca.get(key)
        if held is not None and held.start <= start and held.complete <= now:
            since = max(start, held.complete.floor("min") - REFETCH)
            self.requests += 1
            part = fetch_with_fallback(client, symbol, since, now, now, policy=policy)
            if (part.feed, part.delayed) == (held.feed, held.delayed):
                old = held.frame[(held.frame.index >= start) & (held.frame.index < since)]
                frame = canonical(pd.concat([old, part.frame])) if len(old) else part.frame
                self._alpaca[key] = _Held(start, part.asof, frame, part.feed, part.delayed)
                return FetchResult(frame, part.feed, part.delayed, part.asof, part.note)
        self.requests += 1
        whole = fetch_with_fallback(client, symbol, start, now, now, policy=policy)
        self._alpaca[key] = _Held(start, whole.asof, whole.frame, whole.feed, whole.delayed)
        return whole


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
