"""Names of the real bar files under TEST_DATA_DIR, and a reader for Lean's SPY minute zips."""
from pathlib import Path

import pandas as pd

POLOILO = "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
MASON = "QQQ_1min_2019-02-11_15__masonblier-eqker.csv"


def read_lean_zip(path: Path) -> pd.DataFrame:
    """Test-only reader for Lean's SPY minute zips: ms since midnight ET (bar start), prices x 10000."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        raw = pd.read_csv(z.open(z.namelist()[0]), header=None,
                          names=["ms", "open", "high", "low", "close", "volume"])
    day = pd.Timestamp(path.name[:8], tz="America/New_York")
    idx = (day + pd.to_timedelta(raw["ms"], unit="ms")).dt.tz_convert("UTC")
    out = raw[["open", "high", "low", "close"]] / 10000.0
    out["volume"] = raw["volume"].astype(float)
    out.index = pd.DatetimeIndex(idx, name="timestamp")
    return out
