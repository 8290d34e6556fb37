"""The bars fine-tuning learns from: the last K sessions from Alpaca or a bars file, under the forecast's data
rules (closed bars only, regular hours, gaps filled per session by marketdata.prepare), one frame per session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from marketdata import calendar as mcal
from marketdata.frame import DataError
from marketdata.prepare import prepare_bars
from marketdata.quality import BarRules
from marketdata.recent import fetch_recent_bars


@dataclass(frozen=True)
class SessionBars:
    session: str            # New York date, YYYY-MM-DD
    bars: pd.DataFrame      # canonical, gap-filled bars of the session (UTC index of bar starts)


@dataclass(frozen=True)
class TrainingData:
    raw: pd.DataFrame               # every bar fetched (the A/B replays the forecast from it)
    sessions: list[SessionBars]     # oldest first, only sessions with bars
    provenance: dict[str, Any]


def load_training_bars(cfg: Any) -> TrainingData:
    """The last ``cfg.sessions`` sessions up to the end of the file (or now, from Alpaca), prepared exactly as the
    forecast prepares its context; empty sessions are left out."""
    recent = fetch_recent_bars(cfg.source, cfg.symbol, None, cfg.sessions, cfg.rth, csv=cfg.csv, csv_tz=cfg.csv_tz,
                               csv_label=cfg.csv_label, feed=cfg.feed, sip_fallback=cfg.sip_fallback,
                               url_override=os.environ.get("ALPACA_DATA_URL") or None)
    if recent.frame.empty:
        raise DataError("the data source returned no bars")
    bars, info = prepare_bars(recent.frame, recent.data_asof, days=cfg.sessions, rth=cfg.rth,
                              max_recent_filled=len(recent.frame), recent_window=0,
                              # bad ticks must not become training targets: always dropped and filled here
                              rules=BarRules(cfg.bad_bar_move, cfg.bad_bar_volume), bad_bars="fill")
    if bars.empty:
        raise DataError(f"no closed bars in the last {cfg.sessions} sessions up to {info.asof}")
    sessions = []
    for day in info.sessions:
        start, end = mcal.session_window(day, cfg.rth)
        piece = bars[(bars.index >= start) & (bars.index < end)]
        if len(piece):
            sessions.append(SessionBars(day, piece))
    provenance = {**recent.provenance, "asof": info.asof, "filled_bars": info.filled_count,
                  "real_bars": info.real_count, "bad_bars": info.bad_bars, "empty_sessions": info.empty_sessions}
    return TrainingData(recent.frame, sessions, provenance)
