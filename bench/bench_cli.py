"""End-to-end time of the forecast CLI, as cron runs it: a fresh process, CSV bars, a local Kronos-small-shaped
checkpoint (random weights; the hub is not needed), N paths. Prints a Markdown table for the README.

    .venv/bin/python bench/bench_cli.py [--runs 3] [--n-samples 100] [--bars FILE --asof T]

Needs the test environment (`bash setup_venv.sh --test`): the checkpoint is written with the test helper.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the test helpers write the checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bars", type=Path, default=None, help="bars file (default: synthetic 3 sessions)")
    parser.add_argument("--asof", default="2025-06-04T15:00:00Z")
    args = parser.parse_args()

    import torch

    from support.kronos_checkpoints import write_checkpoint_pair
    from support.bars import synthetic_bars

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model, tokenizer = write_checkpoint_pair(tmp_path / "ckpt", shape="small", seed=0)
        bars = args.bars
        if bars is None:
            bars = tmp_path / "bars.csv"
            synthetic_bars().to_csv(bars, index=False)
        rows = []
        for run in range(args.runs):
            out = tmp_path / f"out{run}"
            cmd = [sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), "--source", "csv", "--csv", str(bars),
                   "--asof", args.asof, "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out),
                   "--n-samples", str(args.n_samples), "--device", args.device, "--seed", str(run), "-q"]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"run {run} failed with exit code {proc.returncode}: {proc.stderr.strip()}")
            timings = json.loads((out / "pred_summary_QQQ_latest.json").read_text())["timings_s"]
            rows.append((wall, timings))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores | "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads | device {args.device} | "
          f"N = {args.n_samples}, lookback 480, horizon 30, Kronos-small shapes\n")
    print("| run | process wall (s) | data (s) | model load (s) | sampling (s) | forecast total (s) |")
    print("|---|---|---|---|---|---|")
    for i, (wall, t) in enumerate(rows):
        print(f"| {i + 1} | {wall:.2f} | {t['data']:.2f} | {t['model_load']:.2f} | {t['sample']:.2f} | "
              f"{t['total']:.2f} |")
    walls = [w for w, _ in rows]
    print(f"\nmedian process wall time: {statistics.median(walls):.2f} s (start of python to exit, files written)")


if __name__ == "__main__":
    main()
