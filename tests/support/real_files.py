"""Names of the real bar files under TEST_DATA_DIR, and a reader for Lean's SPY minute zips."""
from pathlib import Path

import pandas as pd

POLOILO = "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
MASON = "QQQ_1min_2019-02-11_15__masonblier-eqker.csv"
# the many-symbols backtest (test_backtest_ray, bench_ray): two sessions of each real file
UNIVERSE_SESSIONS = {"QQQ": ("2025-05-07", "2025-05-08"), "SPY": ("2013-10-08", "2013-10-09")}


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


def write_universe(real: Path, root: Path) -> Path:
    """QQQ as Parquet and SPY as CSV (from Lean's zips), three sessions each; BAD.csv is not a bars file and
    IWM has none. Written to a temporary folder (the real files stay where they are)."""
    from marketdata.files import read_bars_file

    root.mkdir()
    qqq = read_bars_file(real / POLOILO)
    ny = qqq.index.tz_convert("America/New_York").strftime("%Y-%m-%d")
    lo, hi = UNIVERSE_SESSIONS["QQQ"]
    qqq[(ny >= lo) & (ny <= hi)].to_parquet(root / "QQQ.parquet")
    lo, hi = (s.replace("-", "") for s in UNIVERSE_SESSIONS["SPY"])
    spy = pd.concat([read_lean_zip(p) for p in sorted((real / "lean_spy_minute").glob("*_trade.zip"))
                     if lo <= p.name[:8] <= hi])
    spy.rename_axis("timestamp").reset_index().to_csv(root / "SPY.csv", index=False)
    (root / "BAD.csv").write_text("when,price\nyesterday,1\n")
    return root
