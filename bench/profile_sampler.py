"""Where one sampler call spends its time: torch.profiler's operator table for N paths of Kronos-small shapes
(random weights), after a warm-up call.

    .venv/bin/python bench/profile_sampler.py --device cuda --n 100
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--no-graphs", action="store_true")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_sampler import bars
    from kronos import KronosPathSampler
    from support.kronos_checkpoints import write_checkpoint_pair

    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        pair = write_checkpoint_pair(Path(tmp), "small", seed=0)
        sampler = KronosPathSampler.from_pretrained(*pair, device=args.device, dtype=args.dtype,
                                                    cuda_graphs=False if args.no_graphs else None)
    _, (values, x_stamp, y_stamp) = bars(480, 30)

    def run() -> float:
        start = time.perf_counter()
        sampler.sample(values, x_stamp, y_stamp, n_paths=args.n, seed=0)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run()
    wall = min(run() for _ in range(3))
    phases = phase_times(sampler, run, cuda)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(f"N={args.n} on {args.device} ({args.dtype}, CUDA graphs {sampler.cuda_graphs}): best of 3 {wall:.4f} s")
    print("phases (synchronised before and after each, best of 3): "
          + ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in phases.items()))
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=50))


def phase_times(sampler, run, cuda: bool) -> dict[str, float]:
    """Wall time of the engine's phases within one call: encode + prefill, the token decode, the tokenizer's
    decode of the paths, and the rest (inputs, uniforms, copies back)."""
    import torch

    import kronos.sampler

    best: dict[str, float] = {}
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    tok, net = sampler.tokenizer, sampler.model
    # kronos.sampler.decode_paths: the token decode (static or growing caches) with the tokenizer's decode of the
    # paths inside it, which is timed on its own and subtracted
    patches = [(tok, "encode", "encode"), (net, "prefill", "prefill"), (tok, "decode_prefix", "tokenizer prefix"),
               (kronos.sampler, "decode_paths", "token decode"), (tok, "decode_paths", "tokenizer decode")]
    originals = [getattr(obj, attr) for obj, attr, _ in patches]
    for (obj, attr, name), fn in zip(patches, originals):
        setattr(obj, attr, timed(name, fn))
    try:
        for _ in range(3):
            spent.clear()
            total = run()
            spent["token decode"] -= spent["tokenizer decode"]
            spent["rest"] = total - sum(spent.values())
            for name, t in spent.items():
                best[name] = min(best.get(name, t), t)
    finally:
        for (obj, attr, _), fn in zip(patches, originals):
            setattr(obj, attr, fn)
    return best


if __name__ == "__main__":
    main()
