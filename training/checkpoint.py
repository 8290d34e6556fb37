"""Checkpoints of a fine-tuning run, written atomically.

OUT/best/ (and OUT/best_tokenizer/ when the tokenizer is trained) hold config.json + model.safetensors in the
published layout, so ``--model OUT/best`` of every script loads them unchanged; OUT/best also holds
trained_for.json, its tokenizer and forecast settings, so that ``--model OUT/best`` alone is enough. OUT/last/
holds the same plus state.pt (optimizer, scheduler, step, RNG states, early-stopping counters, loss history):
what a resumed run needs to continue as if it had never stopped. state.pt holds tensors and plain values only and is read with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.json", "state.pt"


@dataclass
class Layout:
    """What a saved copy keeps from its source checkpoint: config.json (the constructor arguments, unchanged)
    and the deterministic buffers upstream stores beside the weights (rotary frequencies, quantiser bases)."""
    config: dict[str, Any]
    derived: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, config: dict[str, Any], weights_path: Path) -> "Layout":
        from safetensors import safe_open

        from kronos.loading import DERIVED_SUFFIXES

        with safe_open(str(weights_path), framework="pt") as f:
            derived = {k: f.get_tensor(k) for k in f.keys() if k.endswith(DERIVED_SUFFIXES)}
        return cls(config, derived)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder tmp in place of final (a reader sees the old folder or the new one, whole)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_network(folder: Path, net: nn.Module, layout: Layout) -> None:
    """config.json + model.safetensors (float32) in the source checkpoint's layout."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file({**layout.derived, **state}, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(layout.config, indent=2, sort_keys=True) + "\n")


def save_published(final: Path, net: nn.Module, layout: Layout, record: dict[str, Any] | None = None) -> Path:
    """The published layout; ``record`` (what the checkpoint was trained with) goes beside it as TRAINED_FOR."""
    from kronos.loading import TRAINED_FOR

    tmp = fresh_tmp(final)
    write_network(tmp, net, layout)
    if record is not None:
        (tmp / TRAINED_FOR).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, final)
    return final


def trained_for_record(cfg: Any, tokenizer_revision: str | None) -> dict[str, Any]:
    """What OUT/best records (kronos.loading.read_trained_for reads it): the tokenizer it works with (OUT/best_tokenizer
    by a path relative to OUT/best when trained, else the hub id at the snapshot used, or the local folder's path)
    and the forecast settings it was trained for."""
    from kronos.loading import TRAINED_SETTINGS

    if cfg.train_tokenizer:
        tokenizer: dict[str, Any] = {"path": "../best_tokenizer"}
    elif Path(cfg.tokenizer).expanduser().is_dir():
        tokenizer = {"path": str(Path(cfg.tokenizer).expanduser().resolve())}
    else:
        tokenizer = {"id": cfg.tokenizer, "revision": cfg.tokenizer_revision or tokenizer_revision}
    return {"tokenizer": tokenizer, "settings": {k: getattr(cfg, k) for k in TRAINED_SETTINGS},
            "base_model": {"id": cfg.model, "revision": cfg.model_revision}, "symbol": cfg.symbol}


def save_last(final: Path, predictor: nn.Module, pred_layout: Layout, tokenizer: nn.Module | None,
              tok_layout: Layout | None, state: dict[str, Any]) -> None:
    tmp = fresh_tmp(final)
    write_network(tmp, predictor, pred_layout)
    if tokenizer is not None and tok_layout is not None:
        (tmp / "tokenizer").mkdir()
        write_network(tmp / "tokenizer", tokenizer, tok_layout)
    torch.save(state, tmp / STATE)
    replace_dir(tmp, final)


def read_weights_into(net: nn.Module, folder: Path) -> None:
    """folder's weights into net, in place, checked as every checkpoint is (kronos.loading.read_weights: names and
    shapes strict, floating point, finite); CheckpointError, one line, otherwise."""
    from kronos.loading import read_weights

    tensors = read_weights(net, folder / WEIGHTS)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            value.copy_(tensors[name])


def read_state(final: Path) -> dict[str, Any]:
    """OUT/last's state.pt; CheckpointError (one line, advising --fresh) when it cannot be read."""
    from kronos import CheckpointError

    try:
        return torch.load(final / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file raises pickle, zip or runtime errors alike
        raise CheckpointError(f"cannot read {final / STATE} ({type(exc).__name__}): the saved run is damaged; "
                              "pass --fresh to start over") from None


def load_last(final: Path, predictor: nn.Module, tokenizer: nn.Module | None) -> dict[str, Any]:
    """Weights into the networks (in place); the rest of the state for the trainer. A damaged OUT/last is a
    CheckpointError whose one line names the problem and --fresh."""
    from kronos import CheckpointError

    try:
        read_weights_into(predictor, final)
        if tokenizer is not None:
            read_weights_into(tokenizer, final / "tokenizer")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; the saved run in {final} is damaged: pass --fresh to start over") from None
    return read_state(final)


def has_last(out: Path) -> bool:
    return (out / "last" / STATE).is_file()
