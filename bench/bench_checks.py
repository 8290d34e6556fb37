"""What the data checks cost: preparing a context with and without the bad-bar check (marketdata.quality), and
reading a bars file with the naive-time zone check, on the real QQQ 2025 bars. Prints a Markdown table.

    TEST_DATA_DIR=/path/to/data .venv/bin/python bench/bench_checks.py [--repeat 30]

A backtest prepares one context per origin, so the per-call difference times its origins is what it pays.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marketdata.files import read_bars_file  # noqa: E402
from marketdata.prepare import prepare_bars  # noqa: E402
from marketdata.quality import BarRules  # noqa: E402

BARS = "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"


def timed(fn, repeat: int) -> float:
    fn()  # warm caches (calendar, imports)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    data = Path(os.environ.get("TEST_DATA_DIR", ROOT.parent / "shared" / "data"))
    frame = read_bars_file(data / BARS)
    asof = "2025-06-25T15:00:00Z"
    rows = [("prepare_bars, 3 sessions RTH, no bad-bar check",
             timed(lambda: prepare_bars(frame, asof, days=3, rules=None), args.repeat)),
            ("prepare_bars, 3 sessions RTH, with the check",
             timed(lambda: prepare_bars(frame, asof, days=3, rules=BarRules()), args.repeat)),
            ("prepare_bars, 3 sessions extended hours, with the check",
             timed(lambda: prepare_bars(frame, asof, days=3, rth=False, rules=BarRules()), args.repeat)),
            (f"read_bars_file, {len(frame)} rows, naive UTC (zone check runs)",
             timed(lambda: read_bars_file(data / BARS), max(3, args.repeat // 10))),
            (f"read_bars_file, {len(frame)} rows, csv_tz UTC (no zone check)",
             timed(lambda: read_bars_file(data / BARS, tz="UTC"), max(3, args.repeat // 10)))]
    print(f"| step (median of {args.repeat}) | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
