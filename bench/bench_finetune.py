"""Benchmark: fine-tuning throughput (tokens per second) and peak memory for the Kronos-mini and Kronos-small
shapes, with the training step finetune.py runs (tokenizer encode, teacher-forced predictor loss, backward,
gradient clipping, AdamW step).

    .venv/bin/python bench/bench_finetune.py                        # CPU, batch 8, window 360 + 30 bars
    .venv/bin/python bench/bench_finetune.py --device cuda --batch 32 --window 510

Each shape runs in a fresh subprocess so its peak memory is its own (CPU: peak RSS of the process; CUDA:
torch.cuda.max_memory_allocated). A token is one predicted bar (window - 1 per window). Random weights come
from tests/kronos_checkpoints.py (needs the test-only reference package). The fp32 matmul rate is measured in
the same run, since this machine's varies by day; "floor" is the step's analytic matmul FLOPs divided by it.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def training_flops(p, t, batch: int, window: int) -> float:
    """Analytic matmul FLOPs of one training step: tokenizer encode (forward), predictor forward over window - 1
    positions with the dual head and the teacher-forced dependency layer, times 3 for forward + backward."""
    from kronos_flops import block, causal_attention

    d, ff, bits, n = p.d_model, p.ff_dim, t.s1_bits + t.s2_bits, window - 1
    encode = (2.0 * window * t.d_in * t.d_model + 2.0 * window * t.d_model * bits
              + (t.n_enc_layers - 1) * (block(window, t.d_model, t.ff_dim) + causal_attention(window, t.d_model)))
    forward = (2.0 * n * 2 * d * d + p.n_layers * (block(n, d, ff) + causal_attention(n, d))
               + 2.0 * n * 4 * d * d + causal_attention(n, d) + 2.0 * n * d * (2**p.s1_bits + 2**p.s2_bits))
    return batch * (encode + 3 * forward)


def worker(args: argparse.Namespace) -> None:
    import torch

    from bench_sampler import matmul_rates
    from kronos.config import tokenizer_config
    from kronos.loading import build, load_trainable, locate
    from kronos.model import Kronos, KronosTokenizer
    from kronos_checkpoints import write_checkpoint_pair
    from training.loop import BETAS, lr_factor
    from training.loss import PredictorObjective

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tok_dir = write_checkpoint_pair(Path(tmp), args.shape, seed=0)
        predictor, _ = load_trainable(Kronos, model_dir, device=device)
        loc = locate(tok_dir)
        tokenizer = build(KronosTokenizer, tokenizer_config(loc.config, str(loc.config_path)), loc, device,
                          torch.float32)
    objective = PredictorObjective(predictor)
    opt = torch.optim.AdamW(predictor.parameters(), lr=4e-5, betas=BETAS, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 10, 1000))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.window, 6, generator=g).clamp(-5, 5).to(device)
    stamp = (torch.rand(args.batch, args.window, 5, generator=g) * torch.tensor([60, 24, 7, 32, 13])).long()
    stamp = stamp.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.no_grad():
            s1, s2 = tokenizer.encode(x)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            loss, _, _ = objective(s1, s2, stamp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), 3.0)
        opt.step()
        sched.step()
        if cuda:
            torch.cuda.synchronize(device)

    rate = matmul_rates()["torch.mm"] if not cuda else None
    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tokens = args.batch * (args.window - 1)
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in predictor.parameters())
    flops = training_flops(predictor.cfg, tokenizer.cfg, args.batch, args.window)
    print(json.dumps({"shape": args.shape, "params": params, "gflop": flops / 1e9, "step_s": min(times), "median_step_s": sorted(times)[len(times) // 2],
                      "tokens_per_s": tokens / min(times), "peak_mib": peak / 2**20, "matmul_gflops": rate}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="mini,small")
    p.add_argument("--batch", type=int, default=8, help="windows per step")
    p.add_argument("--window", type=int, default=390, help="bars per window (lookback + horizon)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (best and median reported)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for shape in args.shapes.split(","):
        cmd = [sys.executable, __file__, "--worker", "--shape", shape, "--device", args.device, "--batch",
               str(args.batch), "--window", str(args.window), "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"fine-tuning step on {args.device} ({platform.processor() or platform.machine()}), batch {args.batch}, "
          f"window {args.window} bars, fp32{' + bf16 autocast' if args.device.startswith('cuda') else ''}")
    print("| shape | parameters | step (best / median) | tokens/s | peak memory | GFLOP/step | fp32 matmul rate "
          "| best step / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['matmul_gflops']:.0f} GFLOP/s" if r["matmul_gflops"] else "-"
        floor = f"{r['step_s'] / (r['gflop'] / r['matmul_gflops']):.1f}x" if r["matmul_gflops"] else "-"
        print(f"| {r['shape']} | {r['params'] / 1e6:.1f} M | {r['step_s']:.2f} s / {r['median_step_s']:.2f} s | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} MiB | {r['gflop']:.0f} | {rate} | {floor} |")


if __name__ == "__main__":
    main()
