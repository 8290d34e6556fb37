"""Origins of a walk-forward run, each replayed as the live run would have seen it (through the pipeline)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from evaluation.outcome import Outcome, realised_outcome
from forecast.errors import Skipped
from forecast.pipeline import Context, ForecastPipeline
from marketdata import calendar as mcal


def sessions_in(frame: pd.DataFrame, start: str | None, end: str | None, rth: bool = True) -> list[pd.Timestamp]:
    """XNYS sessions between start and end (default: the frame's span) that hold at least one bar."""
    if frame.empty:
        return []
    first = mcal.ny_date(frame.index[0]) if start is None else mcal.to_session_label(start)
    last = mcal.ny_date(frame.index[-1]) if end is None else mcal.to_session_label(end)
    cal = mcal.xnys()
    labels = cal.sessions_in_range(max(first, cal.first_session), min(last, cal.last_session))
    out = []
    for s in labels:
        lo, hi = mcal.session_window(s, rth)
        i, j = frame.index.searchsorted(lo), frame.index.searchsorted(hi)
        if j > i:
            out.append(pd.Timestamp(s))
    return out


def make_origins(frame: pd.DataFrame, settings: Any) -> pd.DatetimeIndex:
    """Every ``every`` minutes from open + every up to (not including) the close, in each session."""
    origins: list[pd.Timestamp] = []
    step = pd.Timedelta(minutes=settings.every)
    for s in sessions_in(frame, settings.start, settings.end, settings.rth):
        lo, hi = mcal.session_window(s, settings.rth)
        t = lo + step
        while t < hi:
            origins.append(t)
            t += step
    return pd.DatetimeIndex(origins, name="origin").as_unit("ns")


@dataclass
class Case:
    """One origin, replayed: the context the live run would have had and, once known, the outcome."""
    origin: pd.Timestamp
    session: str
    context: Context | None = None
    outcome: Outcome | None = None  # None while unresolved
    skip: str | None = None

    @property
    def key(self) -> str:
        return self.origin.isoformat()

    @property
    def history(self) -> pd.DataFrame:
        return self.context.bars

    @property
    def times(self) -> pd.DatetimeIndex:
        return self.context.times

    @property
    def truncated(self) -> bool:
        return self.context.plan.truncated

    @property
    def now_close(self) -> float:
        return self.context.now_close if self.context is not None else math.nan


def prepare_case(frame: pd.DataFrame, origin: pd.Timestamp, pipeline: ForecastPipeline) -> Case:
    """The live data preparation at ``origin`` (pipeline.prepare); the frame is cut at the origin first, so no
    bar at or after it can reach a forecaster. The outcome reads the uncut frame."""
    cfg = pipeline.cfg
    case = Case(origin=origin, session=mcal.ny_date(origin).date().isoformat())
    first = mcal.recent_sessions(origin, cfg.days, cfg.rth)
    lo = frame.index.searchsorted(mcal.session_window(first[0], cfg.rth)[0]) if first else 0
    past = frame.iloc[lo:frame.index.searchsorted(origin, side="left")]  # bars starting before the origin only
    try:
        ctx = pipeline.prepare(past, origin)
    except Skipped as exc:
        case.skip = str(exc)
        return case
    if ctx.plan.next_session:
        case.skip = "the last bar closed its session"
        return case
    case.context = ctx
    case.outcome = realised_outcome(frame, ctx.bars, ctx.times, vwap_mode=cfg.vwap_mode, mid_window=cfg.mid_window,
                                    mid_kind=cfg.mid_kind)
    return case
