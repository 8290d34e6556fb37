"""The training card (OUT/card.json) and the loss curve (OUT/loss_curve.png): what was trained on which sessions,
with which settings, how the losses went, which step was best and the A/B verdict."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from forecast.artifacts import atomic_write_json

CARD, CURVE = "card.json", "loss_curve.png"


def write_card(out: Path, card: dict[str, Any]) -> Path:
    from evaluation.report import jsonable  # imported here: training alone need not load the backtest

    return atomic_write_json(out / CARD, jsonable(card))


def plot_losses(out: Path, history: list[dict[str, Any]], best_step: int) -> Path:
    """Training and validation loss against the optimizer step, the best step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forecast.artifacts import atomic_write_bytes

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train), marker=".", label="train (mean since the last validation)")
    ax.plot(steps, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.axvline(best_step, color="grey", linestyle="--", label=f"best step {best_step}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (mean of s1 and s2)")
    ax.set_title("Kronos fine-tuning")
    ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(out / CURVE, buf.getvalue())
