"""Benchmark of n_samples: auto: how many paths a forecast reaches per second of sampling, and what that buys.

    .venv/bin/python bench/bench_auto.py                          # CPU, budgets of 5, 15 and 30 s of sampling
    .venv/bin/python bench/bench_auto.py --device cuda --budgets 2,5,15

Kronos-small-shaped random weights (tests/support/kronos_checkpoints.py, unless --model/--tokenizer name real
checkpoints), lookback 480, horizon 30, the forecast's own stop rule (forecast/auto_samples.py) with a precision
target no run can meet, so every row stops on its time budget: N reached, paths per second, and the half-width
of P(up)'s 95 % interval that N gives at P(up) = 0.5 (the worst case; random weights give a meaningless P(up)).
The 1-minute load average is printed before and after each row: on a shared machine, other processes' load
slows every row, so read the rate beside it.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budgets", default="5,15,30", help="seconds of sampling per row, comma separated")
    parser.add_argument("--lookback", type=int, default=480)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--model", default=None, help="predictor directory (default: random Kronos-small weights)")
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()

    import torch

    from bench_sampler import bars
    from forecast.auto_samples import sample_until_precise
    from forecast.mc_error import proportion_interval
    from kronos import KronosPathSampler

    model, tokenizer = args.model, args.tokenizer
    if model is None:
        from support.kronos_checkpoints import write_checkpoint_pair

        model, tokenizer = write_checkpoint_pair(Path(tempfile.mkdtemp(prefix="bench_auto_")), "small", seed=0)
    sampler = KronosPathSampler.from_pretrained(model, tokenizer, device=args.device)
    _, (values, x_stamp, y_stamp) = bars(args.lookback, args.horizon)
    sampler.sample(values, x_stamp, y_stamp, n_paths=2, seed=0)  # warm-up: allocator, kernels, thread pool
    now_close = float(values[-1, 3])

    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        with sampler.open_stream(values, x_stamp, y_stamp, seed=0) as stream:
            # the forecast's rule: it also keeps time for writing each path out (AFTER_S_PER_PATH)
            res = sample_until_precise(stream.draw, now_close, 1e-9, 10**7, start + budget)
        seconds = time.perf_counter() - start
        n = len(res.paths)
        lo, hi = proportion_interval(n // 2, n)
        rows.append((budget, n, n / seconds, seconds, len(res.chunks), (hi - lo) / 2, load_before,
                     os.getloadavg()[0], res.stopped))

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"n_samples: auto on {args.device} ({device}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; Kronos-small shapes, lookback {args.lookback}, horizon {args.horizon}\n")
    print("| sampling budget | N reached | paths / s | took | chunks | P(up) ± at 0.5 | load 1 min before / after |")
    print("|---|---|---|---|---|---|---|")
    for budget, n, rate, seconds, chunks, half, before, after, stopped in rows:
        assert stopped == "time_budget", stopped
        print(f"| {budget:g} s | {n} | {rate:.1f} | {seconds:.1f} s | {chunks} | {half * 100:.1f} pp | "
              f"{before:.1f} / {after:.1f} |")
    need = math.ceil(1.959964**2 * 0.25 / 0.02**2)
    print(f"\nP(up) ± 2 pp (the default p_up_precision) at P(up) = 0.5 needs about {need} paths.")


if __name__ == "__main__":
    main()
