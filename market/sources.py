"""Load the recent bars a run needs from the configured source, with their provenance."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from market import calendar as mcal
from market.bars import AlpacaBarSource, DataError, credentials_from_env, fetch_with_fallback, read_bars_file
from market.prepare import PrepareInfo, prepare_bars

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecentBars:
    bars: pd.DataFrame          # canonical, gap-filled, closed by `now` (or the delayed feed's cut)
    now: pd.Timestamp           # the run's "now": the clock, --asof, or the end of a bars file
    info: PrepareInfo
    provenance: dict[str, Any]  # source, feed, delay, file, what prepare_bars did


def load_recent_bars(source: str, symbol: str, now: pd.Timestamp | None, days: int, rth: bool, *,
                     csv: str | None = None,
                     csv_tz: str = "auto", csv_label: str = "auto", feed: str = "iex", sip_fallback: str = "iex",
                     recent_window: int = 30, max_recent_filled: int = 10,
                     environ: Mapping[str, str] | None = None, url_override: str | None = None) -> RecentBars:
    """The last `days` sessions of closed 1-minute bars up to `now` (live) or a replayed instant.

    `now` None means the clock for Alpaca and, for a bars file, the close of its last bar (a replay of the
    file's end).
    """
    if source == "csv":
        frame = read_bars_file(csv, tz=csv_tz, label=csv_label)
        if now is None:
            if frame.empty:
                raise DataError(f"bars file {csv} holds no bars")
            now = frame.index[-1] + pd.Timedelta(minutes=1)
        asof = now
        provenance: dict[str, Any] = {"source": "csv", "file": os.path.abspath(str(csv)), "feed": None,
                                      "delayed": False}
    else:
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
        frame, asof = fetched.frame, fetched.asof
        provenance = {"source": "alpaca", **fetched.provenance()}
    bars, info = prepare_bars(frame, asof, days=days, rth=rth, max_recent_filled=max_recent_filled,
                              recent_window=recent_window)
    provenance.update(info.to_dict())
    log.info("%d bars (%d filled) from %s, sessions %s", info.bar_count, info.filled_count,
             provenance["source"], ", ".join(info.sessions))
    return RecentBars(bars=bars, now=now, info=info, provenance=provenance)
