"""Network configurations (the constructor arguments stored in each checkpoint's config.json)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any


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


def config_from_dict(cls: type, raw: dict[str, Any]) -> Any:
    """Keep the keys the network needs; dropouts and quantiser loss weights are training-only."""
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise KeyError(", ".join(missing))
    return cls(**{n: raw[n] for n in names if n in raw})


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
