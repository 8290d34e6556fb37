"""Network configurations (the constructor arguments stored in each checkpoint's config.json), checked strictly,
and the context length of each published checkpoint (which config.json does not store)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, validated or fitted to the network (message: one line)."""


@dataclass(frozen=True)
class TokenizerConfig:
    d_in: int
    d_model: int
    n_heads: int
    ff_dim: int
    n_enc_layers: int  # upstream builds n_enc_layers - 1 encoder blocks
    n_dec_layers: int  # likewise n_dec_layers - 1 decoder blocks
    s1_bits: int
    s2_bits: int


@dataclass(frozen=True)
class PredictorConfig:
    s1_bits: int
    s2_bits: int
    n_layers: int
    d_model: int
    n_heads: int
    ff_dim: int
    learn_te: bool = True


# The largest value of each size field a Kronos network plausibly has (the published base model uses 832, 12
# layers, 16 heads, 2048, 10 bits): beyond these a config is corrupt, and building it would exhaust memory.
LIMITS = {"d_model": 16384, "n_heads": 256, "ff_dim": 65536, "n_layers": 256, "n_enc_layers": 64,
          "n_dec_layers": 64, "s1_bits": 20, "s2_bits": 20}
DEP_HEADS = 4  # the dependency-aware layer's head count is fixed upstream, not in config.json
D_IN = 6  # open, high, low, close, volume, amount


def _check_types(cls: type, raw: dict[str, Any], where: str, kind: str) -> None:
    for f in fields(cls):
        if f.name not in raw:
            if f.default is MISSING:
                raise CheckpointError(f"{where}: not a Kronos {kind} config: missing field {f.name!r}")
            continue
        value = raw[f.name]
        if f.type == "bool":
            if not isinstance(value, bool):
                raise CheckpointError(f"{where}: field {f.name!r} must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:  # bool is an int in Python
            raise CheckpointError(f"{where}: field {f.name!r} must be a positive integer, got {value!r}")
        elif value > LIMITS.get(f.name, value):
            raise CheckpointError(f"{where}: field {f.name!r} is {value}, beyond any Kronos network (at most "
                                  f"{LIMITS[f.name]}); the config is corrupt")


def _check_heads(d_model: int, n_heads: int, prefix: str, where: str) -> None:
    if d_model % n_heads:
        raise CheckpointError(f"{where}: field 'd_model' ({d_model}) is not divisible by {prefix}n_heads ({n_heads})")
    if (d_model // n_heads) % 2:  # rotary embedding rotates pairs of dimensions
        raise CheckpointError(f"{where}: head dimension d_model/{prefix}n_heads = {d_model // n_heads} must be even")


def tokenizer_config(raw: Any, where: str) -> TokenizerConfig:
    """Validate a tokenizer config.json; extra keys (dropouts, quantiser loss weights) are training-only."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: config.json must hold a JSON object, got {type(raw).__name__}")
    _check_types(TokenizerConfig, raw, where, "tokenizer")
    cfg = TokenizerConfig(**{f.name: raw[f.name] for f in fields(TokenizerConfig)})
    if cfg.d_in != D_IN:
        raise CheckpointError(f"{where}: field 'd_in' must be {D_IN} (open, high, low, close, volume, amount), "
                              f"got {cfg.d_in}")
    _check_heads(cfg.d_model, cfg.n_heads, "", where)
    return cfg


def predictor_config(raw: Any, where: str) -> PredictorConfig:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: config.json must hold a JSON object, got {type(raw).__name__}")
    _check_types(PredictorConfig, raw, where, "predictor")
    cfg = PredictorConfig(**{f.name: raw[f.name] for f in fields(PredictorConfig) if f.name in raw})
    if not cfg.learn_te:
        raise CheckpointError(f"{where}: field 'learn_te' is false; only learned time embeddings are supported")
    _check_heads(cfg.d_model, cfg.n_heads, "", where)
    _check_heads(cfg.d_model, DEP_HEADS, "dependency-layer ", where)
    return cfg


def check_pair(pred: PredictorConfig, tok: TokenizerConfig, pred_where: str, tok_where: str) -> None:
    """The tokenizer's code bits must index the predictor's two vocabularies."""
    for name in ("s1_bits", "s2_bits"):
        a, b = getattr(pred, name), getattr(tok, name)
        if a != b:
            raise CheckpointError(f"{tok_where}: field {name!r} is {b} but the predictor {pred_where} has {a}: "
                                  "tokenizer and predictor do not pair")


# Context length is not stored in config.json; it is a property of the published checkpoint.
CONTEXT_BY_REPO = {
    "NeoQuasar/Kronos-mini": 2048,
    "NeoQuasar/Kronos-small": 512,
    "NeoQuasar/Kronos-base": 512,
}
# (d_model, n_layers) of each published predictor, to recognise a local copy.
CONTEXT_BY_SHAPE = {(256, 4): 2048, (512, 8): 512, (832, 12): 512}
DEFAULT_CONTEXT = 512  # what the upstream predictor assumes when nobody says otherwise


def default_context(source: str, cfg: PredictorConfig) -> int:
    if source in CONTEXT_BY_REPO:
        return CONTEXT_BY_REPO[source]
    return CONTEXT_BY_SHAPE.get((cfg.d_model, cfg.n_layers), DEFAULT_CONTEXT)
