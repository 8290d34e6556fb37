"""Real QQQ minute bars as engine inputs, and random contexts drawn from them (the engine exactness tests)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from kronos import complete_columns
from support.kronos_checkpoints import time_features
from support.real_files import POLOILO

QQQ = POLOILO  # the 60-day QQQ file under TEST_DATA_DIR


@lru_cache(maxsize=1)
def qqq_bars(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(values [T, 6] with amount = volume x mean price, stamps [T, 5] of the New York wall clock)."""
    import pandas as pd

    df = pd.read_csv(path)
    ts = pd.DatetimeIndex(pd.to_datetime(df["Datetime"])).tz_localize("UTC").tz_convert("America/New_York")
    return complete_columns(df[["Open", "High", "Low", "Close", "Volume"]].to_numpy()), time_features(ts)


def contexts(values: np.ndarray, stamps: np.ndarray, lookback: int, horizon: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    starts = rng.choice(len(values) - lookback - horizon, size=count, replace=False)
    x = np.stack([values[s : s + lookback] for s in starts])
    xs = np.stack([stamps[s : s + lookback] for s in starts])
    ys = np.stack([stamps[s + lookback : s + lookback + horizon] for s in starts])
    return x, xs, ys
