"""The realised outcome of a forecast: what happened in the minutes it covered, by the live metrics' own rules.

Backtest scoring and run-log calibration both score with this one function, so the two can never judge the same
forecast differently: the window is the forecast's minutes, filled by the live gap rule; the VWAP session is
the live metric's (the New York date of the context's last bar); touches use the live touch rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecast.metrics import mid_band, p_hit_level, p_hit_vwap, session_bars_of_last_day
from marketdata.frame import fill_minutes


@dataclass(frozen=True)
class Outcome:
    bars: pd.DataFrame        # the forecast minutes' bars, gaps filled (previous close, volume 0)
    now_close: float
    up: float                 # 1.0 when the last close is above now_close, else 0.0
    hit_vwap: float | None    # 1.0 / 0.0: the realised path touched the session VWAP; None without a VWAP
    hit_mid: float | None     # the same for the mid band held at its value at the origin

    @property
    def close(self) -> np.ndarray:
        return self.bars["close"].to_numpy(float)


def realised_outcome(frame: pd.DataFrame, context: pd.DataFrame, times: pd.DatetimeIndex, *, vwap_mode: str,
                     mid_window: int, mid_kind: str, new_session: bool = False) -> Outcome | None:
    """The outcome of a forecast made from ``context`` (the prepared bars it saw) for the minutes ``times``,
    read from the raw bars ``frame``; None while the window is not over in ``frame``."""
    if frame.empty or frame.index[-1] < times[-1]:
        return None
    now_close = float(context["close"].iloc[-1])
    real = fill_minutes(frame, times, now_close)
    path = np.concatenate([real.to_numpy(float), np.zeros((len(times), 1))], axis=1)[None]  # amount unused
    session = context.iloc[:0] if new_session else session_bars_of_last_day(context)
    hit = p_hit_vwap(path, session, now_close, vwap_mode)
    mid = mid_band(context["close"].to_numpy(float), mid_window, mid_kind)
    hit_mid = p_hit_level(path, now_close, mid)
    return Outcome(real, now_close, float(real["close"].iloc[-1] > now_close),
                   None if math.isnan(hit) else float(hit), None if math.isnan(hit_mid) else float(hit_mid))
