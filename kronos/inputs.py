"""Input arrays of the sampler: checks with clear messages, the upstream column rules, float64 normalisation."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

COLUMNS = ("open", "high", "low", "close", "volume", "amount")
STAMP_FIELDS = ("minute", "hour", "weekday", "day", "month")
STAMP_SIZES = (60, 24, 7, 32, 13)  # the time-embedding tables: every field must index into its table
CLIP = 5.0
EPS = 1e-5


def complete_columns(ohlc_v: Any) -> np.ndarray:
    """[..., 4] (o, h, l, c) or [..., 5] (+ volume) -> [..., 6] float64 with the upstream predictor's rules:
    no volume -> volume = amount = 0; no amount -> amount = volume * mean(o, h, l, c). [..., 6] is returned as is."""
    x = np.asarray(ohlc_v, dtype=np.float64)
    if x.ndim < 1 or x.shape[-1] not in (4, 5, 6):
        raise ValueError(f"complete_columns needs a last axis of 4 (open, high, low, close), 5 (+ volume) or 6 "
                         f"(+ amount) columns, got shape {x.shape}")
    if x.shape[-1] == 6:
        return x.copy()
    if x.shape[-1] == 4:
        zeros = np.zeros(x.shape[:-1] + (2,))
        return np.concatenate([x, zeros], axis=-1)
    amount = x[..., 4:5] * x[..., :4].mean(axis=-1, keepdims=True)
    return np.concatenate([x, amount], axis=-1)


def check_values(values: Any, ndim: int) -> np.ndarray:
    """values [O, P, 6] (ndim 3) or [P, 6] (ndim 2), real and finite -> float64 [O, P, 6]."""
    x = np.asarray(values)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"values must be a real numeric array, got dtype {x.dtype}")
    if x.ndim != ndim or x.shape[-1] != len(COLUMNS) or x.shape[-2] < 1:
        want = "[O, P, 6]" if ndim == 3 else "[P, 6]"
        raise ValueError(f"values must have shape {want} (columns {', '.join(COLUMNS)}; see complete_columns), "
                         f"got {x.shape}")
    x = x.astype(np.float64).reshape((-1,) + x.shape[-2:])
    if not np.isfinite(x).all():
        bad = [c for j, c in enumerate(COLUMNS) if not np.isfinite(x[..., j]).all()]
        raise ValueError(f"values have NaN or infinite entries in column(s) {', '.join(bad)}")
    return x


def check_stamps(stamps: Any, name: str, ndim: int, n_origins: int, length: int | None) -> np.ndarray:
    """Time features [O, T, 5] (or [T, 5]) of integer (minute, hour, weekday, day, month) -> int64 [O, T, 5]."""
    s = np.asarray(stamps)
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"{name} must hold integers (minute, hour, weekday, day, month), got dtype {s.dtype}")
    want = "[O, T, 5]" if ndim == 3 else "[T, 5]"
    if s.ndim != ndim or s.shape[-1] != len(STAMP_FIELDS) or s.shape[-2] < 1:
        raise ValueError(f"{name} must have shape {want} (minute, hour, weekday, day, month), got {s.shape}")
    s = s.astype(np.int64).reshape((-1,) + s.shape[-2:])
    if s.shape[0] != n_origins:
        raise ValueError(f"{name} has {s.shape[0]} origins but values have {n_origins}")
    if length is not None and s.shape[1] != length:
        raise ValueError(f"{name} has {s.shape[1]} time steps but values have {length} rows")
    for j, (field, size) in enumerate(zip(STAMP_FIELDS, STAMP_SIZES)):
        col = s[..., j]
        if col.min() < 0 or col.max() >= size:
            raise ValueError(f"{name}: {field} must be in 0..{size - 1}, got values from {col.min()} to {col.max()}")
    return s


def check_seeds(seeds: Sequence[int | None] | None, n_origins: int) -> list[int | None]:
    if seeds is None:
        return [None] * n_origins
    if isinstance(seeds, (int, np.integer, str, bytes)) or not hasattr(seeds, "__len__"):
        raise ValueError(f"seeds must be a sequence of {n_origins} ints or None (one per origin), or None")
    if len(seeds) != n_origins:
        raise ValueError(f"seeds has {len(seeds)} entries but there are {n_origins} origins")
    out: list[int | None] = []
    for s in seeds:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**64):
            raise ValueError(f"each seed must be None or an integer in [0, 2**64), got {s!r}")
        out.append(None if s is None else int(s))
    return out


def check_sampling(n_paths: int, temperature: float, top_k: int, top_p: float) -> None:
    if isinstance(n_paths, bool) or int(n_paths) != n_paths or n_paths < 1:
        raise ValueError(f"n_paths must be a positive integer, got {n_paths}")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 disables it), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def normalise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values float64 [O, P, 6] -> (clipped normalised values, mean, std + 1e-5), all float64.

    Population mean and std over each origin's whole lookback, as upstream, but in float64: statistics of
    prices near 500 in float32 depend on the summation order enough to flip a tokenizer bit now and then.
    Each origin is computed on its own, so its numbers do not depend on which other origins share the batch.
    """
    out, means, scales = np.empty_like(values), np.empty((len(values), 1, 6)), np.empty((len(values), 1, 6))
    for o, x in enumerate(values):
        mean = x.sum(axis=0) / x.shape[0]
        centered = x - mean
        scale = np.sqrt((centered * centered).sum(axis=0) / x.shape[0]) + EPS
        out[o] = np.clip(centered / scale, -CLIP, CLIP)
        means[o, 0], scales[o, 0] = mean, scale
    return out, means, scales


def generator(seed: int | None) -> torch.Generator:
    """The CPU generator of one origin's uniforms (None: fresh OS entropy; the global RNG is untouched)."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
