"""Find a checkpoint pair (local directories or hub repo ids through the huggingface_hub cache), validate it as a
pair and load it without random initialisation. Every failure is a one-line CheckpointError naming the file."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .config import CheckpointError, check_pair, predictor_config, tokenizer_config
from .layers import fuse_projections, make_trainable, onednn_available, use_onednn
from .model import Kronos, KronosTokenizer

FILES = ("config.json", "model.safetensors")
# Deterministic buffers that upstream saves alongside the weights; we recompute them, so they may be absent.
DERIVED_SUFFIXES = ("rotary.inv_freq", "tokenizer.bsq.basis", "tokenizer.bsq.group_basis")


# A fine-tuned folder's record of what it was trained with (training writes it beside config.json): its tokenizer
# ({"path": ...} relative to the folder or absolute, or {"id": hub repo id, "revision": commit}) and the forecast
# settings it was trained for, so that `--model OUT/best` alone forecasts as it was trained.
TRAINED_FOR = "trained_for.json"
TRAINED_SETTINGS = ("lookback", "horizon", "rth", "time_label")


def read_trained_for(model: str | os.PathLike | None) -> dict[str, Any] | None:
    """The settings a local fine-tuned checkpoint records (tokenizer, tokenizer_revision and TRAINED_SETTINGS, as
    config keys), or None for a hub id or a folder without the record; a damaged record is a CheckpointError."""
    if model is None:
        return None
    folder = Path(model).expanduser()
    path = folder / TRAINED_FOR
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        tok = record["tokenizer"]
        if "path" in tok:
            tok_path = Path(tok["path"]).expanduser()
            out: dict[str, Any] = {"tokenizer": str(tok_path if tok_path.is_absolute()
                                                    else (folder / tok_path).resolve()), "tokenizer_revision": None}
        else:
            out = {"tokenizer": str(tok["id"]), "tokenizer_revision": tok.get("revision")}
        out.update({k: record["settings"][k] for k in TRAINED_SETTINGS if k in record["settings"]})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(one_line(f"{path}: not a readable record of the fine-tuned checkpoint "
                                       f"({type(exc).__name__}: {exc})")) from None
    return out


@dataclass
class Checkpoint:
    config: Any  # parsed config.json (validated later, per kind)
    config_path: Path
    weights_path: Path
    revision: str | None  # commit hash of the hub snapshot, None for a plain directory


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(source: str) -> bool:
    # a hub id is "name" or "org/name"; anything else that is not an existing directory is a bad path
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or Path(source).exists()


def locate(source: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    """Resolve a local directory or a hub repo id (optionally pinned) to its parsed config and weights file."""
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
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(one_line(f"cannot read {config_path}: {exc}")) from exc
    except ValueError as exc:
        raise CheckpointError(one_line(f"{config_path}: not valid JSON: {exc}")) from exc
    return Checkpoint(config, config_path, weights_path, snapshot)


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import constants, hf_hub_download

    # huggingface_hub reads these variables at import; read them now so a late setting still counts.
    cache_dir = os.path.expanduser(os.environ.get("HF_HUB_CACHE", "")) or constants.HF_HUB_CACHE
    offline = _env_true("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE
    try:
        with _quiet_hub():
            return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                   local_files_only=offline)
    except Exception as exc:  # hub errors have many types (HTTP, offline, missing entry, bad id)
        pin = f" at revision {revision}" if revision else ""
        hint = (f"Looked in the hub cache at {cache_dir}. " +
                ("HF_HUB_OFFLINE is set, so only that cache is used: download the checkpoint there first."
                 if offline else "If the hub is unreachable, set HF_HUB_OFFLINE=1 to use a cached copy, "
                 "or pass a local directory holding config.json and model.safetensors."))
        raise CheckpointError(one_line(f"cannot get {filename} of {repo_id}{pin}: {type(exc).__name__}: {exc}. "
                                       f"{hint}")) from exc


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs a warning for every retry of a failed request; the failure itself is reported once,
    as our CheckpointError, so its warnings are held back meanwhile."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def read_weights(net: nn.Module, weights_path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for net's state dict: names and shapes strict, floating point, all finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(one_line(f"cannot read {weights_path}: {exc}")) from exc
    expected = net.state_dict()  # meta tensors: names and shapes only
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.endswith(DERIVED_SUFFIXES))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs network {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = ([f"mis-shaped tensor {w}" for w in wrong] + [f"missing tensor {k}" for k in missing] +
                [f"unexpected tensor {k}" for k in unexpected])
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(f"{weights_path} does not fit {type(net).__name__}: " + "; ".join(problems[:3]) + more)
    for name in expected:
        t = tensors[name]
        if not t.is_floating_point():
            raise CheckpointError(f"{weights_path}: tensor {name} has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{weights_path}: tensor {name} has non-finite values (NaN or infinity)")
    return {k: tensors[k] for k in expected}


def build(cls: type[nn.Module], cfg: Any, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
          trainable: bool = False) -> nn.Module:
    """Construct on the meta device (no random initialisation), adopt the checkpoint's tensors, fuse projections;
    on CPU in float32 the linear layers then run through oneDNN (see layers.Linear).
    trainable=True: a network to fine-tune instead: unfused (every projection its own parameter), plain
    matmuls, gradients on, train mode."""
    try:
        with torch.device("meta"):
            net = cls(cfg)
    except (RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise CheckpointError(one_line(f"{ckpt.config_path}: the network it describes cannot be built: {exc}")) \
            from None
    weights = read_weights(net, ckpt.weights_path)
    state = {k: t.to(device=device, dtype=dtype) for k, t in weights.items()}
    if trainable:
        state = {k: t.clone() for k, t in state.items()}  # own storage: the optimiser updates it in place
    net.load_state_dict(state, strict=True, assign=True)
    if trainable:
        return make_trainable(net).train().requires_grad_(True)
    fuse_projections(net).eval().requires_grad_(False)
    if device.type == "cpu" and dtype == torch.float32 and onednn_available():
        use_onednn(net)
    return net


def load_pair(model: str | os.PathLike, tokenizer: str | os.PathLike, model_revision: str | None = None,
              tokenizer_revision: str | None = None, device: torch.device = torch.device("cpu"),
              dtype: torch.dtype = torch.float32) -> tuple[Kronos, KronosTokenizer, str | None, str | None]:
    """Validate both configs and their pairing before reading any weights; the tokenizer stays float32."""
    m, t = locate(model, model_revision), locate(tokenizer, tokenizer_revision)
    pcfg = predictor_config(m.config, str(m.config_path))
    tcfg = tokenizer_config(t.config, str(t.config_path))
    check_pair(pcfg, tcfg, str(m.config_path), str(t.config_path))
    predictor = build(Kronos, pcfg, m, device, dtype)
    tok = build(KronosTokenizer, tcfg, t, device, torch.float32)  # small, and its sign bits stay exact
    return predictor, tok, m.revision, t.revision  # type: ignore[return-value]


def load_trainable(cls: type[nn.Module], source: str | os.PathLike, revision: str | None = None,
                   device: torch.device = torch.device("cpu")) -> tuple[nn.Module, Checkpoint]:
    """One float32 network to fine-tune (see build(trainable=True)) and its checkpoint (raw config.json kept, so
    a fine-tuned copy is saved with the same constructor arguments)."""
    ckpt = locate(source, revision)
    if cls is Kronos:
        cfg: Any = predictor_config(ckpt.config, str(ckpt.config_path))
    else:
        cfg = tokenizer_config(ckpt.config, str(ckpt.config_path))
    return build(cls, cfg, ckpt, device, torch.float32, trainable=True), ckpt


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return names[dtype]
