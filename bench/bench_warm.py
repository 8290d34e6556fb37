"""Cold vs --warm cron runs: the wall time of each run as cron starts it (a fresh client process, start to exit),
beside the run's own data and sampling time, median of several. CSV bars of three sessions, a local
Kronos-small-shaped checkpoint (random weights), N paths. Prints a Markdown table and the machine's load.

    .venv/bin/python bench/bench_warm.py [--runs 5] [--n-samples 100] [--device cpu]

The warm runs share one worker, started by a first run that is not counted (it pays what a cold run pays); the
worker is stopped at the end. Needs the test environment (`bash setup_venv.sh --test`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the test helpers write the checkpoint


def one_run(cmd: list[str], out: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"a run failed with exit code {proc.returncode}: {proc.stderr.strip()}")
    return wall, json.loads((out / "pred_summary_QQQ_latest.json").read_text())["timings_s"]


def stop_workers(directory: Path) -> None:
    from app.warm import peer_pid

    import socket

    for sock in directory.glob("*.sock"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock))
            pid = peer_pid(conn)
            if pid:
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="small", help="checkpoint shape: tiny, mini, small or base")
    args = parser.parse_args()

    import torch

    from support.kronos_checkpoints import write_checkpoint_pair
    from support.bars import synthetic_bars

    tmp_path = Path(tempfile.mkdtemp(prefix="kwb"))
    try:
        model, tokenizer = write_checkpoint_pair(tmp_path / "ckpt", shape=args.shape, seed=0)
        bars = tmp_path / "bars.csv"
        synthetic_bars().to_csv(bars, index=False)
        warm_dir = tmp_path / "run"
        warm_dir.mkdir(mode=0o700)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "KRONOS_WARM_DIR": str(warm_dir)}
        loads = [os.getloadavg()[0]]
        rows: dict[str, list] = {"cold": [], "warm": []}
        for mode in ("cold", "warm"):
            out = tmp_path / mode
            for run in range(args.runs + (mode == "warm")):
                asof = f"2025-06-04T15:{run:02d}:00Z"
                cmd = [sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), "--source", "csv", "--csv", str(bars),
                       "--asof", asof, "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out),
                       "--n-samples", str(args.n_samples), "--device", args.device, "--seed", "1", "-q",
                       "--time-budget", "900",  # a loaded machine must not turn the bench into exit 7
                       *(["--warm"] if mode == "warm" else [])]
                wall, timings = one_run(cmd, out, env)
                if mode == "warm" and run == 0:
                    continue  # starts the worker
                rows[mode].append((wall, timings))
                loads.append(os.getloadavg()[0])
        stop_workers(warm_dir)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average (1 min) "
          f"{min(loads):.1f}..{max(loads):.1f} during the runs | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | device {args.device} | N = {args.n_samples}, lookback 480, "
          f"horizon 30, Kronos-{args.shape} shapes\n")
    print("| run | wall (s) | data (s) | model load (s) | sampling (s) | wall - data - sampling (s) |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for mode, runs in rows.items():
        over = [w - t["data"] - t["sample"] for w, t in runs]
        medians[mode] = (statistics.median(w for w, _ in runs), statistics.median(over),
                         statistics.median(t["sample"] for _, t in runs))
        for i, ((wall, t), o) in enumerate(zip(runs, over)):
            print(f"| {mode} {i + 1} | {wall:.2f} | {t['data']:.2f} | {t['model_load']:.2f} | {t['sample']:.2f} | "
                  f"{o:.2f} |")
    print()
    for mode, (wall, over, sample) in medians.items():
        print(f"{mode}: median wall {wall:.2f} s, median sampling {sample:.2f} s, median wall beyond data and "
              f"sampling {over:.2f} s")


if __name__ == "__main__":
    main()
