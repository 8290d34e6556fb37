"""Which minutes a forecast covers, and what the model sees as their time features.

Rules (the README's "session edges" section):
- The forecast starts at the minute after the last closed bar and covers `horizon` trading minutes of the same
  session. When fewer are left, `near_close: truncate` forecasts to the close (metric names then carry the shorter
  horizon, e.g. p_up_12m) and `near_close: skip` skips; fewer than `min_horizon` minutes always skips.
- When the last bar ended its session (market closed, or the first minute of a session before its first bar has
  closed), the forecast covers the first `horizon` minutes of the next session: the model sees the overnight gap
  just as it saw gaps in training.
- Event quiet windows: a forecast whose span [now, end of horizon] meets [event - before, event + after] is
  flagged or skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecast.errors import Skipped
from marketdata.calendar import next_bar_starts, session_containing, session_minutes, xnys
from marketdata.frame import ONE_MINUTE

NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class HorizonPlan:
    times: pd.DatetimeIndex   # UTC bar starts of the forecast minutes
    next_session: bool        # the forecast covers the start of the next session, not the rest of this one
    truncated: bool           # fewer minutes than asked because the session closes sooner
    notes: tuple[str, ...]    # human-readable reasons, copied into the summary


def plan_horizon(last_bar_start: pd.Timestamp, horizon: int, rth: bool, near_close: str,
                 min_horizon: int) -> HorizonPlan:
    """The forecast minutes after the last closed bar, or Skipped with the reason."""
    times = next_bar_starts(last_bar_start, horizon, rth)
    notes: list[str] = []
    next_session = len(times) == 0
    if next_session:
        session = session_containing(last_bar_start, rth)
        if session is None:
            raise Skipped(f"the last bar {last_bar_start.isoformat()} lies outside every session window", "data")
        following = xnys().next_session(session)
        times = session_minutes(following, rth)[:horizon]
        notes.append(f"the last bar closed the {session.date()} session: forecasting the first {len(times)} "
                     f"minutes of the {following.date()} session from the last close")
    truncated = len(times) < horizon
    if truncated:
        if near_close == "skip":
            raise Skipped(f"only {len(times)} minutes are left in the session, fewer than the horizon of "
                          f"{horizon} (near_close: skip)", "session_end")
        notes.append(f"only {len(times)} minutes are left in the session: horizon truncated from {horizon}")
    if len(times) < min_horizon:
        raise Skipped(f"only {len(times)} minutes are left to forecast, fewer than min_horizon {min_horizon}",
                      "session_end")
    return HorizonPlan(times=times, next_session=next_session, truncated=truncated, notes=tuple(notes))


def model_time_index(bar_starts: pd.DatetimeIndex, label: str) -> pd.DatetimeIndex:
    """New York wall-clock stamps (naive) that become the model's minute/hour/weekday/day/month features.

    label 'start' uses each bar's start minute (Alpaca's labelling); 'end' the minute it closes.
    """
    stamps = bar_starts.tz_convert(NEW_YORK).tz_localize(None)
    return stamps + ONE_MINUTE if label == "end" else stamps


def model_time_features(bar_starts: pd.DatetimeIndex, label: str) -> np.ndarray:
    """The engine's time features [T, 5] of each bar: New York wall-clock minute, hour, weekday (Monday = 0),
    day of month and month, from its start or end minute (``model_time_index``)."""
    idx = model_time_index(pd.DatetimeIndex(bar_starts), label)
    return np.stack([idx.minute, idx.hour, idx.day_of_week, idx.day, idx.month], axis=-1).astype(np.int64)


def events_in_window(now: pd.Timestamp, times: pd.DatetimeIndex, events: list[str], before_min: int,
                     after_min: int) -> list[str]:
    """The events whose quiet window [event - before, event + after] meets the forecast span [now, end]."""
    span_end = times[-1] + ONE_MINUTE
    hits = []
    for text in events:
        event = pd.Timestamp(text).tz_convert("UTC")
        if now <= event + pd.Timedelta(minutes=after_min) and event - pd.Timedelta(minutes=before_min) <= span_end:
            hits.append(event.isoformat())
    return hits
