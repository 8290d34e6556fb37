"""Find checkpoints (local directory or hub repo id through the huggingface_hub cache) and load them strictly."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PredictorConfig, TokenizerConfig, config_from_dict
from .model import KronosPredictor, KronosTokenizer, fuse_projections

FILES = ("config.json", "model.safetensors")
# Deterministic buffers that upstream saves alongside the weights; we recompute them, so they may be absent.
DERIVED_SUFFIXES = ("rotary.inv_freq", "tokenizer.bsq.basis", "tokenizer.bsq.group_basis")


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, downloaded, read or fitted to the network."""


@dataclass
class Checkpoint:
    config: dict[str, Any]
    weights_path: Path
    revision: str | None  # commit hash of the hub snapshot, None for a plain directory


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(source: str) -> bool:
    # a hub id is "name" or "org/name"; anything else that is not an existing directory is a bad path
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or Path(source).exists()


def locate(source: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    """Resolve a local directory or a hub repo id (optionally pinned) to its config and weights file."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = [path / f for f in FILES]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"checkpoint directory {path} lacks {', '.join(missing)}")
        config_path, weights_path, snapshot = files[0], files[1], None
    elif _looks_like_path(str(source)):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    else:
        config_path, weights_path = (Path(_hub_file(str(source), f, revision)) for f in FILES)
        snapshot = weights_path.parent.name  # the snapshot folder is named after the commit hash
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc}") from exc
    return Checkpoint(config, weights_path, snapshot)


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import constants, hf_hub_download

    # huggingface_hub reads these variables at import; read them now so a late setting still counts.
    cache_dir = os.path.expanduser(os.environ.get("HF_HUB_CACHE", "")) or constants.HF_HUB_CACHE
    offline = _env_true("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE
    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline)
    except Exception as exc:  # hub errors have many types (HTTP, offline, missing entry, bad id)
        pin = f" at revision {revision}" if revision else ""
        hint = (f"Looked in the hub cache at {cache_dir}. " +
                ("HF_HUB_OFFLINE is set, so only that cache is used: download the checkpoint there first."
                 if offline else "If the hub is unreachable, set HF_HUB_OFFLINE=1 to use a cached copy, "
                 "or pass a local directory holding config.json and model.safetensors."))
        raise CheckpointError(f"cannot get {filename} of {repo_id}{pin}: {type(exc).__name__}: {exc}. {hint}") from exc


def load_weights(module: nn.Module, weights_path: Path) -> None:
    """Strict load from safetensors (never pickle); the error names any missing, unexpected or mis-shaped tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.endswith(DERIVED_SUFFIXES))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs network {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = ([f"missing tensor {k}" for k in missing] + [f"unexpected tensor {k}" for k in unexpected] +
                [f"mis-shaped tensor {w}" for w in wrong])
    if problems:
        raise CheckpointError(f"{weights_path} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({k: tensors[k] for k in expected}, strict=True)


def build(kind: str, ckpt: Checkpoint) -> nn.Module:
    """Construct the network from config.json and load its weights; eval mode, gradients off."""
    cls, cfg_cls = {"predictor": (KronosPredictor, PredictorConfig), "tokenizer": (KronosTokenizer, TokenizerConfig)}[kind]
    try:
        cfg = config_from_dict(cfg_cls, ckpt.config)
    except KeyError as exc:
        raise CheckpointError(f"config.json next to {ckpt.weights_path} is not a Kronos {kind} config: "
                              f"missing {exc.args[0]}") from exc
    try:
        net = cls(cfg)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    load_weights(net, ckpt.weights_path)
    return fuse_projections(net).eval().requires_grad_(False)


def load_predictor(source: str | os.PathLike, revision: str | None = None) -> tuple[KronosPredictor, str | None]:
    ckpt = locate(source, revision)
    return build("predictor", ckpt), ckpt.revision  # type: ignore[return-value]


def load_tokenizer(source: str | os.PathLike, revision: str | None = None) -> tuple[KronosTokenizer, str | None]:
    ckpt = locate(source, revision)
    return build("tokenizer", ckpt), ckpt.revision  # type: ignore[return-value]


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return names[dtype]
