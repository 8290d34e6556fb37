#!/usr/bin/env python3
"""Fan chart PNG from a run's artifacts (summary JSON + paths CSV).

  python plot_paths.py                         # outputs/pred_summary_QQQ_latest.json
  python plot_paths.py --dir outputs --symbol QQQ --out fan.png
  python plot_paths.py --summary outputs/pred_summary_QQQ_20250501T140000Z.json
  python plot_paths.py --history-csv bars.csv  # time column first, then a close column

Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

PROG = "plot_paths"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(2, f"{PROG}: error: {message}\n")


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def _paths_csv_for(summary_path: Path, summary: dict[str, Any]) -> Path:
    # The "artifacts" block names the paths file of the same run; else derive the name.
    name = summary.get("artifacts", {}).get("paths_close")
    if not name:
        name = summary_path.name.replace("pred_summary_", "paths_", 1).removesuffix(".json") + ".csv"
    return summary_path.with_name(name)


def read_paths_csv(path: Path) -> tuple[pd.DatetimeIndex, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2 or not rows[0] or rows[0][0] != "path":
        raise ValueError(f"{path}: not a paths CSV (header must start with 'path')")
    times = pd.DatetimeIndex(rows[0][1:])
    values = np.array([[float(v) if v else np.nan for v in r[1:]] for r in rows[1:]])
    return times, values


def _history(summary: dict[str, Any], history_csv: Path | None) -> pd.Series | None:
    if history_csv is not None:
        df = pd.read_csv(history_csv, index_col=0)
        if "close" not in df.columns:
            raise ValueError(f"{history_csv}: no 'close' column")
        return pd.Series(df["close"].to_numpy(float), index=pd.to_datetime(df.index, utc=True))
    block = summary.get("history")
    if not block:
        return None
    return pd.Series(np.asarray(block["close"], float), index=pd.to_datetime(block["times"], utc=True))


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog=PROG, description="Fan chart PNG from run artifacts.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--summary", type=Path, help="summary JSON (default: <dir>/pred_summary_<symbol>_latest.json)")
    src.add_argument("--dir", type=Path, default=Path("outputs"),
                     help="artifact directory (default: outputs, as in config.yaml)")
    ap.add_argument("--symbol", default="QQQ", help="symbol for the default file names (default: QQQ)")
    ap.add_argument("--out", type=Path, help="PNG path (default: next to the summary, fan_<...>.png)")
    ap.add_argument("--history-csv", type=Path, help="recent bars CSV with a close column (overrides the summary)")
    args = ap.parse_args(argv)

    summary_path = args.summary or args.dir / f"pred_summary_{args.symbol}_latest.json"
    try:
        summary = json.loads(summary_path.read_text())
        times, closes = read_paths_csv(_paths_csv_for(summary_path, summary))
        history = _history(summary, args.history_csv)
        out = args.out or summary_path.with_name(
            summary_path.name.replace("pred_summary_", "fan_", 1).removesuffix(".json") + ".png")
        from forecast.plotting import fan_chart  # after argument checks: matplotlib is slow to import

        fan_chart(history, times, closes, summary, out, symbol=summary.get("symbol") or args.symbol)
    except FileNotFoundError as exc:
        _fail(f"file not found: {exc.filename}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
