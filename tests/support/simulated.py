"""Simulated bars with known answers, and the baseline set, for tests only."""
from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.baselines import BlockBootstrap, Garch, PathForecaster, RandomWalk, arch_model


def default_baselines() -> list[PathForecaster]:
    out: list[PathForecaster] = [RandomWalk(), BlockBootstrap()]
    if arch_model is not None:
        out.append(Garch())
    return out


def u_shape_profile(minutes_since_open: np.ndarray, session_len: int = 390) -> np.ndarray:
    """Relative 1-minute volatility across the day: high at the open and close, low at midday (for simulations)."""
    x = (np.asarray(minutes_since_open, dtype=float) - session_len / 2) / (session_len / 2)
    return 1.0 + 1.5 * x**2


def simulate_bars(start: str, n_sessions: int, sigma: float = 4e-4, price: float = 500.0,
                  seed: int = 0) -> pd.DataFrame:
    """Regular-hours XNYS bars of a zero-drift random walk with a U-shaped volatility profile (known answers).

    sigma is the 1-minute log-return volatility at midday; overnight the price does not move. Each bar's
    high / low reach a little beyond its open / close, volume follows the profile."""
    from marketdata import calendar as mcal

    cal = mcal.xnys()
    sessions = cal.sessions_in_range(start, cal.last_session)[:n_sessions]
    rng = np.random.default_rng(seed)
    frames, close = [], price
    for s in sessions:
        idx = mcal.session_minutes(s)
        sd = sigma * u_shape_profile(np.arange(len(idx)))
        c = close * np.exp(np.cumsum(rng.standard_normal(len(idx)) * sd))
        o = np.concatenate([[close], c[:-1]])
        wick = np.abs(rng.standard_normal((2, len(idx)))) * sd * c * 0.5
        frames.append(pd.DataFrame({"open": o, "high": np.maximum(o, c) + wick[0], "low": np.minimum(o, c) - wick[1],
                                    "close": c, "volume": 1e5 * u_shape_profile(np.arange(len(idx)))}, index=idx))
        close = float(c[-1])
    return pd.concat(frames)
