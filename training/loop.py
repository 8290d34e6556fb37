"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA (fp32 on CPU),
validation every ``eval_every`` steps, early stopping with patience, best and last checkpoints, exact resume.

Data order is a function of (seed, step): epoch e shuffles the training windows with the generator seeded by
(seed, e), and step s takes global batch s mod steps-per-epoch of it. A resumed run therefore sees the same
batches, with the optimizer, scheduler and RNG states restored, as the run that never stopped.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import checkpoint as ck
from forecast.errors import Diverged
from training.distributed import World, any_flag, broadcast_flag
from training.loss import PredictorObjective, TokenizerObjective
from training.windows import Split, make_batch

log = logging.getLogger(__name__)
BETAS = (0.9, 0.95)  # upstream's AdamW betas


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int          # global: windows per optimizer step over all ranks
    lr: float
    tokenizer_lr: float
    weight_decay: float
    warmup_steps: int
    max_steps: int
    eval_every: int
    eval_windows: int        # validation windows per evaluation (evenly spaced; 0 = all)
    patience: int            # evaluations without improvement before stopping
    grad_clip: float
    seed: int


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def global_rows(step: int, n_windows: int, batch: int, seed: int) -> np.ndarray:
    """The training windows of optimizer step ``step`` (all ranks together)."""
    per_epoch = n_windows // batch
    epoch, j = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    return order[j * batch:(j + 1) * batch]


def eval_rows(n_windows: int, limit: int) -> np.ndarray:
    if limit <= 0 or n_windows <= limit:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, limit).round().astype(np.int64))


class Trainer:
    """Fine-tunes a predictor (and optionally its tokenizer) on the windows of the train split."""

    def __init__(self, predictor: nn.Module, tokenizer: nn.Module, splits: dict[str, Split], length: int,
                 settings: TrainSettings, world: World, out: Path, pred_layout: ck.Layout,
                 tok_layout: ck.Layout, train_tokenizer: bool, fingerprint: dict[str, Any]):
        self.predictor, self.tokenizer, self.splits, self.length = predictor, tokenizer, splits, length
        self.s, self.world, self.out = settings, world, out
        self.pred_layout, self.tok_layout, self.train_tokenizer = pred_layout, tok_layout, train_tokenizer
        self.fingerprint = fingerprint
        self.device = world.device
        self.pred_obj: nn.Module = PredictorObjective(predictor)
        self.tok_obj: nn.Module | None = TokenizerObjective(tokenizer, tok_layout.config) if train_tokenizer else None
        groups = [{"params": list(predictor.parameters()), "lr": settings.lr}]
        if train_tokenizer:
            groups.append({"params": list(tokenizer.parameters()), "lr": settings.tokenizer_lr})
        self.optimizer = torch.optim.AdamW(groups, betas=BETAS, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, settings.warmup_steps, settings.max_steps))
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device] if self.device.type == "cuda" else None
            self.pred_obj = DDP(self.pred_obj, device_ids=ids, broadcast_buffers=False)
            if self.tok_obj is not None:
                self.tok_obj = DDP(self.tok_obj, device_ids=ids, broadcast_buffers=False)
        self.step, self.best_val, self.best_step, self.bad_evals = 0, math.inf, -1, 0
        self.history: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.window_loss: list[float] = []
        self.best_record: dict[str, Any] | None = None  # written beside OUT/best (checkpoint.trained_for_record)

    # ------------------------------------------------------------------------------------------ pieces

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32 on CPU

    def batch(self, split: Split, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised windows and their tokens under the current tokenizer (no gradient through the tokens)."""
        x, stamp = make_batch(split, rows, self.length)
        x_t = torch.from_numpy(x).to(self.device)
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        with torch.no_grad():
            s1, s2 = self.tokenizer.encode(x_t)
        self.tokenizer.train(was_training)
        return x_t, s1, s2, torch.from_numpy(stamp).to(self.device)

    def train_step(self) -> float:
        rows = global_rows(self.step, self.splits["train"].n_windows, self.s.batch_size, self.s.seed)
        rows = rows[self.world.rank::self.world.size]
        x, s1, s2, stamp = self.batch(self.splits["train"], rows)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, _, _ = self.pred_obj(s1, s2, stamp)
        loss.backward()
        if self.tok_obj is not None:
            with self.autocast():
                tok_loss, _, _ = self.tok_obj(x)
            tok_loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip))
        value = float(loss.detach())
        tok_value = float(tok_loss.detach()) if self.tok_obj is not None else 0.0
        self.stop_if_diverged({"training loss": value, "tokenizer loss": tok_value, "gradient norm": norm},
                              self.step + 1)  # before the step: the weights never take a NaN
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return value

    def stop_if_diverged(self, values: dict[str, float], step: int) -> None:
        """Diverged (exit 8), on every rank together, when a loss or the gradient norm is NaN or infinite: a
        run that goes on would only write NaN checkpoints and a card that looks finished."""
        bad = {name: v for name, v in values.items() if not math.isfinite(v)}
        if any_flag(self.world, bool(bad)):
            what = ", ".join(f"{name} {v}" for name, v in bad.items()) or "a loss on another process not finite"
            kept = f"{self.out / 'best'} keeps step {self.best_step}" if self.history else "nothing was kept"
            raise Diverged(f"fine-tuning stopped at step {step}: {what}; {kept}; lower --lr ({self.s.lr:g}) or "
                           "--grad-clip, or check the bars")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean predictor loss over the validation windows (every rank computes all of it: same number)."""
        split = self.splits["validation"]
        rows = eval_rows(split.n_windows, self.s.eval_windows)
        obj = PredictorObjective(self.predictor)
        self.predictor.eval()
        total = 0.0
        for i in range(0, len(rows), self.s.batch_size):
            part = rows[i:i + self.s.batch_size]
            _, s1, s2, stamp = self.batch(split, part)
            with self.autocast():
                loss, _, _ = obj(s1, s2, stamp)
            total += float(loss) * len(part)
        self.predictor.train()
        return total / len(rows)

    # ------------------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "best_val": self.best_val, "best_step": self.best_step,
                "bad_evals": self.bad_evals, "history": self.history, "stopped": self.stopped,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "fingerprint": self.fingerprint}

    def restore(self, state: dict[str, Any]) -> None:
        self.step, self.best_val, self.best_step = state["step"], state["best_val"], state["best_step"]
        self.bad_evals, self.history, self.stopped = state["bad_evals"], state["history"], state["stopped"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def save_last(self) -> None:
        if self.world.main:
            ck.save_last(self.out / "last", self.predictor, self.pred_layout,
                         self.tokenizer if self.train_tokenizer else None, self.tok_layout, self.state())

    def save_best(self) -> None:
        if self.world.main:
            ck.save_published(self.out / "best", self.predictor, self.pred_layout, self.best_record)
            if self.train_tokenizer:
                ck.save_published(self.out / "best_tokenizer", self.tokenizer, self.tok_layout)

    def after_step(self) -> None:
        """Called after every optimizer step (a seam for tests that interrupt a run)."""

    # ------------------------------------------------------------------------------------------ the loop

    def record_eval(self) -> None:
        val = self.evaluate()
        self.stop_if_diverged({"validation loss": val}, self.step)
        train = float(np.mean(self.window_loss)) if self.window_loss else None
        self.window_loss = []
        self.history.append({"step": self.step, "train_loss": train, "val_loss": val,
                             "lr": self.scheduler.get_last_lr()[0]})
        if val < self.best_val:
            self.best_val, self.best_step, self.bad_evals = val, self.step, 0
            self.save_best()
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.s.patience:
            self.stopped = "early_stopping"
        if self.world.main:
            log.info("step %d: validation loss %.5f (best %.5f at step %d)", self.step, val, self.best_val,
                     self.best_step)

    def run(self, progress: bool = True) -> dict[str, Any]:
        from tqdm import tqdm

        if not self.history:  # fresh run: the vanilla model's validation loss is the bar to beat
            torch.manual_seed(self.s.seed + self.world.rank)
            self.record_eval()
            self.save_last()
        tokens = (self.length - 1) * self.s.batch_size
        bar = tqdm(total=self.s.max_steps, initial=self.step, desc="fine-tune", unit="step", file=sys.stderr,
                   disable=not (progress and self.world.main))
        try:
            while self.step < self.s.max_steps and self.stopped is None:
                t0 = time.perf_counter()
                loss = self.train_step()
                self.window_loss.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}")
                if self.step % self.s.eval_every == 0 or self.step == self.s.max_steps:
                    self.record_eval()
                    if broadcast_flag(self.world, self.stopped is not None) and self.stopped is None:
                        self.stopped = "early_stopping"  # rank 0 decides (every rank computes the same loss)
                    if self.step == self.s.max_steps and self.stopped is None:
                        self.stopped = "max_steps"
                    self.save_last()
                self.after_step()
        finally:
            bar.close()
        return {"steps": self.step, "best_step": self.best_step, "best_val_loss": self.best_val,
                "vanilla_val_loss": self.history[0]["val_loss"], "stopped": self.stopped,
                "history": self.history}
