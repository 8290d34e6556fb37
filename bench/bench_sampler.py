"""Benchmark: our KronosPathSampler against the reference predictor on Kronos-small-shaped random weights.

    .venv/bin/python bench/bench_sampler.py                      # CPU, N = 1, 10, 100, 1000; reference N = 1
    .venv/bin/python bench/bench_sampler.py --device cuda --ns 1,100,1000,10000

Each (implementation, N) runs in a fresh subprocess so its peak RSS is its own. Ours is timed after one
small warm-up call of min(N, 2) paths (best of --repeats for N <= 100, or N <= 1000 on CUDA, where the first
timed call of N > 2 also captures the CUDA graph and is printed apart); the reference once per N, and its per-path time (its cost is
linear in N: it recomputes the whole window for every path at every step) is extrapolated to larger N.
For N = --floor-n (100) the worker also measures the machine's matmul rate before and after the timed calls
(CPU: fp32 2048^3 through torch.mm and oneDNN's linear; CUDA: 8192^3 through cuBLAS in fp32 and bf16) and the
analytic FLOPs of the run (bench/kronos_flops.py), so the floor FLOPs / rate and our time as a multiple of it
come from the same run. Peak CUDA memory is that of the timed calls; peak RSS is the process's, so on the
floor run it includes the CPU rate check's operands (3 x 16 MB).
Random weights come from tests/support/kronos_checkpoints.py (needs the test-only reference package), unless
--model/--tokenizer point at real checkpoint directories.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def bars(lookback: int, horizon: int):
    """(DataFrame, x_timestamp, y_timestamp) for the reference and (values, x_stamp, y_stamp) for ours."""
    import numpy as np
    import pandas as pd

    from support.kronos_checkpoints import frame_inputs

    rng = np.random.default_rng(0)
    close = 100 + np.cumsum(rng.normal(0, 0.5, lookback))
    df = pd.DataFrame({"open": close + rng.normal(0, 0.2, lookback), "high": close + 0.4, "low": close - 0.4,
                       "close": close, "volume": rng.uniform(1e4, 5e4, lookback)})
    stamps = pd.Series(pd.date_range("2024-03-01 09:30", periods=lookback + horizon, freq="5min"))
    frame = df, stamps[:lookback].reset_index(drop=True), stamps[lookback:].reset_index(drop=True)
    return frame, frame_inputs(*frame)


def matmul_rates(device: str, size: int = 2048, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a size^3 matmul. CPU: float32 through torch.mm (MKL) and oneDNN's linear (what we use on CPU).
    CUDA (8192^3): float32 (TF32 off, torch's default, as the engine runs) and bfloat16."""
    import torch

    from kronos.layers import onednn_available, onednn_linear

    if device.startswith("cuda"):
        size = 8192
        runs = {}
        for name, dtype in (("cuBLAS fp32", torch.float32), ("cuBLAS bf16", torch.bfloat16)):
            a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
            runs[name] = lambda a=a, b=b: a @ b
    else:
        a, b = torch.randn(size, size), torch.randn(size, size)
        runs = {"torch.mm": lambda: a @ b}
        if onednn_available():
            runs["oneDNN"] = lambda: onednn_linear(a, b, None)
    rates = {}
    for name, fn in runs.items():
        fn()
        best = min(timed_once(fn, device) for _ in range(repeats))
        rates[name] = 2 * size**3 / best / 1e9
    return rates


def timed_once(fn, device: str = "cpu") -> float:
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """Time one implementation at one N; print a JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    (df, x_ts, y_ts), (values, x_stamp, y_stamp) = bars(args.lookback, args.horizon)
    cuda = args.device.startswith("cuda")

    def timed(fn):
        return timed_once(fn, args.device)

    extra: dict = {}
    if args.worker == "ours":
        from kronos import KronosPathSampler

        start = time.perf_counter()
        graphs = False if args.no_graphs else None
        sampler = KronosPathSampler.from_pretrained(args.model, args.tokenizer, device=args.device, dtype=args.dtype,
                                                    cuda_graphs=graphs)
        extra["graphs"] = sampler.cuda_graphs
        extra["load_s"] = time.perf_counter() - start
        run = lambda n: sampler.sample(values, x_stamp, y_stamp, n_paths=n, top_p=0.9, seed=0)  # noqa: E731
        first = timed(lambda: run(min(args.n, 2)))  # warm-up: allocator, kernels, thread pool
        floor_run = args.n == args.floor_n
        if floor_run:
            extra["rates_before"] = matmul_rates(args.device)
        if cuda:  # the peak of the timed calls only, not of the rate check's operands (about 1 GB at 8192^2)
            torch.cuda.reset_peak_memory_stats()
        repeats = args.repeats if args.n <= 100 or (cuda and args.n <= 1000) else 1
        times = [timed(lambda: run(args.n)) for _ in range(repeats)]
        extra["times"] = times
        if cuda:
            extra["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if floor_run:
            extra["rates_after"] = matmul_rates(args.device)
            from kronos_flops import sampler_flops

            extra["flops"] = sampler_flops(sampler.model.cfg, sampler.tokenizer.cfg, args.lookback, args.horizon,
                                           args.n)
    else:
        from model import Kronos, KronosPredictor, KronosTokenizer

        ref = KronosPredictor(Kronos.from_pretrained(args.model).eval(), KronosTokenizer.from_pretrained(args.tokenizer).eval(),
                              device=args.device, max_context=512)
        first = 0.0
        times = [timed(lambda: ref.predict(df, x_ts, y_ts, pred_len=args.horizon, T=1.0, top_p=0.9,
                                           sample_count=args.n, verbose=False))]
    if cuda:
        extra["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(json.dumps({"best": min(times), "first": first, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cuda_mb": None,
                      "threads": torch.get_num_threads(), "torch": torch.__version__} | extra))


def measure(args: argparse.Namespace, impl: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--model", str(args.model),
           "--tokenizer", str(args.tokenizer), "--device", args.device, "--dtype", args.dtype,
           "--lookback", str(args.lookback), "--horizon", str(args.horizon), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--floor-n", str(args.floor_n)] + (["--no-graphs"] if args.no_graphs else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise SystemExit(f"{impl} N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: auto)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--ns", default="1,10,100,1000", help="path counts for our sampler")
    p.add_argument("--ref-ns", default="1", help="path counts for the reference (slow); empty to skip")
    p.add_argument("--floor-n", type=int, default=100, help="N whose run also measures FLOPs and matmul rates")
    p.add_argument("--lookback", type=int, default=480)
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-graphs", action="store_true", help="CUDA: launch each decode step from Python")
    p.add_argument("--model", default=None, help="predictor directory (default: random Kronos-small weights)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        from kronos.sampler import pick_device

        args.device = str(pick_device(None))
    if args.worker:
        return worker(args)

    tmp = tempfile.TemporaryDirectory(prefix="kronos_bench_")
    if args.model is None:
        from support.kronos_checkpoints import write_checkpoint_pair

        args.model, args.tokenizer = write_checkpoint_pair(Path(tmp.name), "small", seed=0)
    load_before = os.getloadavg()
    ref = {n: measure(args, "ref", n) for n in [int(x) for x in args.ref_ns.split(",") if x]}
    ours = {n: measure(args, "ours", n) for n in [int(x) for x in args.ns.split(",") if x]}
    load_after = os.getloadavg()
    info = next(iter(ours.values()))
    ref_per_path = ref[max(ref)]["best"] / max(ref) if ref else None

    gpu = f" ({info['gpu']}, CUDA graphs {'on' if info['graphs'] else 'off'})" if "gpu" in info else ""
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; device {args.device}{gpu}; torch {info['torch']}; "
          f"{info['threads']} threads; dtype {args.dtype}; lookback {args.lookback}, horizon {args.horizon}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    mem_col = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"\n| impl | N | total s | per path ms | speed-up | {mem_col} |\n|---|---|---|---|---|---|")
    for n, r in ref.items():
        print(f"| reference | {n} | {r['best']:.2f} | {1000 * r['best'] / n:.0f} | 1.0 | {r['rss_mb']:.0f} |")
    for n, r in ours.items():
        speed = f"{ref_per_path * n / r['best']:.0f}x" + ("" if n in ref else " (ref extrapolated)") if ref_per_path else "-"
        mem = r["cuda_mb"] if args.device.startswith("cuda") else r["rss_mb"]
        print(f"| ours | {n} | {r['best']:.3f} | {1000 * r['best'] / n:.1f} | {speed} | {mem:.0f} |")
    if ref_per_path:
        print(f"\nReference per-path time {ref_per_path:.2f} s (from its N={max(ref)} run; its cost is linear in N), "
              f"so N=100 would take about {100 * ref_per_path:.0f} s and N=1000 about {1000 * ref_per_path:.0f} s.")
    firsts = ", ".join(f"N={n}: {r['first']:.2f} s" for n, r in ours.items())
    print(f"Ours: best of the timed calls after one warm-up call of N<=2 (warm-up call times: {firsts}).")
    if any(r.get("graphs") for r in ours.values()):
        captures = ", ".join(f"N={n}: {r['times'][0]:.3f} s" for n, r in ours.items())
        print(f"First timed call of each N, which captures its CUDA graph for N > 2 (later calls replay it; "
              f"the warm-up call captured N <= 2's): {captures}.")
    loads = ", ".join(f"{r['load_s']:.2f}" for r in ours.values())
    print(f"Load time (from_pretrained: read, validate, build on the meta device, fuse), per worker: {loads} s")
    if args.floor_n in ours and "flops" in ours[args.floor_n]:
        print_floor(args.floor_n, ours[args.floor_n])


def print_floor(n: int, r: dict) -> None:
    flops = r["flops"]
    total = sum(flops.values())
    print(f"\nFLOPs of N={n} (analytic, bench/kronos_flops.py):\n\n| part | GFLOP |\n|---|---|")
    for part, f in flops.items():
        print(f"| {part} | {f / 1e9:.1f} |")
    print(f"| total | {total / 1e9:.1f} |")
    size = "8192^3 on the GPU" if any(k.startswith("cuBLAS") for k in r["rates_before"]) else "2048^3"
    print(f"\nmatmul rate, {size}, same process (before / after the timed calls), and the floor FLOPs / rate:\n")
    print("| matmul | GFLOP/s before | GFLOP/s after | floor s (best rate) | our time s | multiple of floor |")
    print("|---|---|---|---|---|---|")
    for name in r["rates_before"]:
        rate = max(r["rates_before"][name], r["rates_after"][name])
        floor = total / (rate * 1e9)
        print(f"| {name} | {r['rates_before'][name]:.0f} | {r['rates_after'][name]:.0f} | {floor:.3f} | "
              f"{r['best']:.3f} | {r['best'] / floor:.2f}x |")


if __name__ == "__main__":
    main()
