"""Backtest throughput, origins per second: one process against Ray with 1 and 2 Kronos workers (and a GPU worker
when there is a GPU). Real bars (QQQ 2025 and SPY 2013 from TEST_DATA_DIR), a random-weight Kronos checkpoint
of a published shape (the hub is not needed), Kronos only. Prints a Markdown table for the README.

    TEST_DATA_DIR=../shared/data .venv/bin/python bench/bench_ray.py [--shape small] [--n-samples 20]

Wall time is the whole command as a user runs it (for Ray: joining the already started local cluster, starting
the workers and loading the model in each, collecting and reporting); "compute" is the mean of the shards' own
seconds from run.json, i.e. what a warm worker sustains. Needs the test environment (`setup_venv.sh --test`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))


def run_backtest(argv: list[str]) -> float:
    import backtest

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = backtest.main(argv)
    if code != 0:
        raise SystemExit(f"backtest exited {code}: {' '.join(argv)}")
    return time.perf_counter() - t0


def shard_rate(out: Path, symbols: list[str]) -> float:
    """Origins per second of a warm worker: origins over the shards' own seconds."""
    shards = [t for s in symbols for t in json.loads((out / s / "run.json").read_text()).get("shards", {}).values()]
    return sum(t["origins"] for t in shards) / sum(t["seconds"] for t in shards) if shards else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="small", help="checkpoint shape: tiny, mini, small, base")
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--every", type=int, default=30)
    p.add_argument("--lookback", type=int, default=240)
    p.add_argument("--symbols", default="QQQ,SPY")
    args = p.parse_args()
    data = os.environ.get("TEST_DATA_DIR")
    if not data:
        raise SystemExit("set TEST_DATA_DIR to the shared real-bars folder")

    import ray
    import torch

    from support.kronos_checkpoints import write_checkpoint_pair
    from support.real_files import write_universe

    symbols = args.symbols.split(",")
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model, tok = write_checkpoint_pair(tmp_path / "ck", args.shape, seed=0)
        bars = write_universe(Path(data), tmp_path / "bars")
        common = ["--config", str(ROOT / "config.yaml"), "--symbols", args.symbols, "--data-dir", str(bars),
                  "--every", str(args.every), "--n-samples", str(args.n_samples), "--lookback", str(args.lookback),
                  "--seed", "1", "--forecasters", "kronos", "--model", str(model), "--tokenizer", str(tok),
                  "--max-context", "512", "--no-progress", "--no-plots"]
        # (name, device, torch threads of this process, flags); a Ray worker of one CPU slot runs one thread
        modes = [("one process, 1 thread", "cpu", 1, []), (f"one process, {cores} threads", "cpu", cores, []),
                 ("Ray, 1 worker", "cpu", 1, ["--ray", "--ray-workers", "1"]),
                 ("Ray, 2 workers", "cpu", 1, ["--ray", "--ray-workers", "2"])]
        if gpu:
            modes += [("one process", "cuda", cores, []),
                      ("Ray, 1 GPU worker", "cuda", 1, ["--ray", "--ray-workers", "1", "--ray-worker-gpus", "1"])]
        ray.init(num_cpus=max(2, cores), include_dashboard=False, log_to_driver=False)
        rows = []
        try:
            for name, device, threads, extra in modes:
                out = tmp_path / f"out{len(rows)}"
                torch.set_num_threads(threads)
                wall = run_backtest(common + ["--device", device, "--out", str(out)] + extra)
                n = sum(1 for s in symbols for line in (out / s).glob("**/*.jsonl")
                        for rec in map(json.loads, line.read_text().splitlines()) if rec["forecaster"] == "kronos")
                compute = shard_rate(out, symbols) if extra else float("nan")
                rows.append((name, device, n, wall, n / wall, compute))
        finally:
            ray.shutdown()
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; "
          f"Kronos-{args.shape}-shaped random weights, {args.n_samples} paths, lookback {args.lookback}, "
          f"origins every {args.every} min, {args.symbols}\n")
    print("| run | device | origins | wall s | origins/s (wall) | origins/s per worker (shards) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, device, n, wall, rate, compute in rows:
        shown = "-" if compute != compute else f"{compute:.2f}"
        print(f"| {name} | {device} | {n} | {wall:.1f} | {rate:.2f} | {shown} |")


if __name__ == "__main__":
    main()
