"""Benchmark: fine-tuning throughput (tokens per second) and peak memory for the Kronos-mini and Kronos-small
shapes, timing the training step finetune.py runs: training.loop.Trainer.train_step (the batch's windows
normalised one by one, tokenizer encode, teacher-forced predictor loss, backward, gradient clipping, AdamW step)
with finetune.py's default settings, on windows of random-walk minute bars.

    .venv/bin/python bench/bench_finetune.py                        # CPU, batch 8, window 360 + 30 bars
    .venv/bin/python bench/bench_finetune.py --device cuda --batch 32 --window 510

Each shape runs in a fresh subprocess so its peak memory is its own (CPU: peak RSS of the process; CUDA:
torch.cuda.max_memory_allocated). A token is one predicted bar (window - 1 per window). Random weights come
from tests/support/kronos_checkpoints.py (needs the test-only reference package). The fp32 matmul rate is measured in
the same run, since this machine's varies by day; "floor" is the step's analytic matmul FLOPs divided by it
(the per-window normalisation and the copy to the device are in the step's time, not in its FLOPs).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
HORIZON = 30  # a window is lookback + HORIZON bars


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


def synthetic_split(window: int, batch: int) -> Any:
    """A train split of random-walk minute bars (tests/support/simulated.py), windows of ``window`` bars across sessions
    at stride 1: at least ``batch`` of them, built as finetune.py builds its splits."""
    from support import simulated
    from training.data import SessionBars
    from training.windows import build_split

    n_sessions = -(-(window + batch) // 390) + 1
    bars = simulated.simulate_bars("2025-05-01", n_sessions, seed=0)
    days = bars.index.tz_convert("America/New_York").date
    sessions = [SessionBars(str(d), bars[days == d]) for d in sorted(set(days))]
    return build_split("train", sessions, window, 1, True, "start")


def worker(args: argparse.Namespace) -> None:
    import torch

    from app.config import load_config
    from bench_sampler import matmul_rates
    from support.kronos_checkpoints import write_checkpoint_pair
    from training.distributed import World
    from training.loop import TrainSettings, Trainer
    from training.run import check_context, load_networks

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tok_dir = write_checkpoint_pair(Path(tmp), args.shape, seed=0)
        # finetune.py's defaults (learning rates, weight decay, warm-up, clipping, dropout) and its network setup
        cfg = load_config(None, {"model": str(model_dir), "tokenizer": str(tok_dir), "device": args.device,
                                 "lookback": args.window - HORIZON, "horizon": HORIZON, "batch_size": args.batch},
                          script="finetune")
        configs = check_context(cfg)
        predictor, tokenizer = load_networks(cfg, configs, device)
        settings = TrainSettings(cfg.batch_size, cfg.lr, cfg.tokenizer_lr, cfg.weight_decay, cfg.warmup_steps,
                                 cfg.max_steps, cfg.eval_every, cfg.eval_windows, cfg.patience, cfg.grad_clip, 0)
        trainer = Trainer(predictor, tokenizer, {"train": synthetic_split(args.window, args.batch)}, args.window,
                          settings, World(0, 1, device), Path(tmp), configs["model_layout"],
                          configs["tokenizer_layout"], cfg.train_tokenizer, {})
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        trainer.train_step()  # what each optimizer step of finetune.py runs: its windows, normalised and encoded
        if cuda:
            torch.cuda.synchronize(device)

    rate = matmul_rates(args.device)["torch.mm"] if not cuda else None
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
    print(json.dumps({"shape": args.shape, "params": params, "gflop": flops / 1e9, "step_s": min(times),
                      "median_step_s": sorted(times)[len(times) // 2], "tokens_per_s": tokens / min(times),
                      "peak_mib": peak / 2**20, "matmul_gflops": rate}))


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
