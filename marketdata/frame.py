"""The canonical 1-minute bar frame, the data errors, and the one gap-fill rule.

Canonical frame: a DataFrame whose index is a tz-aware UTC DatetimeIndex named "timestamp" (the bar's START
minute, ns resolution), with float64 columns open, high, low, close, volume; sorted ascending and unique.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("open", "high", "low", "close", "volume")
ONE_MINUTE = pd.Timedelta(minutes=1)


class DataError(ValueError):
    """Bad or unusable input data (one line naming the problem, file and row/column where known)."""


class NoDataError(RuntimeError):
    """The source returned nothing usable."""


class DataSourceError(RuntimeError):
    """The data API could not be used: network failure, HTTP error, rejected keys, malformed body."""


class SubscriptionError(DataSourceError):
    """The plan does not permit the request (Alpaca's free plan asking for SIP data of the last 15 minutes)."""


# ---------------------------------------------------------------------------------------------- canonical frame

def empty_frame() -> pd.DataFrame:
    idx = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series([], dtype="float64", index=idx) for c in COLUMNS}, index=idx)


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes and index name/unit of the canonical frame (no validation)."""
    out = frame.loc[:, list(COLUMNS)].astype("float64")
    out.index = pd.DatetimeIndex(out.index).as_unit("ns").rename("timestamp")
    return out



def fill_minutes(bars: pd.DataFrame, grid: pd.DatetimeIndex, prev_close: float = np.nan) -> pd.DataFrame:
    """The bars on every minute of ``grid``; a minute without a bar is a flat bar at the previous close
    (open = high = low = close) with volume 0. Before the first real bar of the grid the previous close is
    ``prev_close``. This is the one gap-fill rule: the live context, the backtest's outcomes and the run-log
    calibration all fill with it."""
    out = bars.reindex(grid)
    missing = out["close"].isna().to_numpy()
    close = out["close"].ffill().fillna(prev_close)
    for col in ("open", "high", "low", "close"):
        out[col] = np.where(missing, close, out[col])
    out["volume"] = out["volume"].fillna(0.0)
    return out[list(COLUMNS)]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
