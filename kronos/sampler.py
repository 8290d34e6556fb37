"""Path sampling: encode and prefill each context once, then decode all paths together with a shared-prefix KV cache."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import default_context
from .loading import load_predictor, load_tokenizer, to_dtype
from .model import KV, KronosPredictor, KronosTokenizer, new_path_cache, to_path_layout
from .sampling import sample_tokens

CLIP = 5.0
COLUMNS = ("open", "high", "low", "close", "volume", "amount")


@dataclass
class Prefix:
    """Everything about the contexts that all paths share (O origins, P context tokens)."""
    blocks: list[KV]  # predictor self-attention K/V per layer, [O, h, P, e]
    dep: KV  # dependency-layer K/V of the context hidden states
    h_last: Tensor  # [O, d] final hidden state of the last context position
    logits_s1: Tensor  # [O, V1] s1 logits for the first new token
    decoder: list[KV]  # tokenizer decoder K/V of the context tokens


def prefill(predictor: KronosPredictor, tokenizer: KronosTokenizer, x: Tensor, stamp: Tensor) -> Prefix:
    """x [O, P, 6] normalised values, stamp [O, P, 5] -> the shared prefix state."""
    s1, s2 = tokenizer.encode(x)
    h, kvs = predictor(s1, s2, stamp)
    dep = tuple(t.transpose(1, 2).contiguous() for t in predictor.dep_layer.keys_values(h))
    h_last = h[:, -1]
    return Prefix(kvs, dep, h_last, predictor.head.proj_s1(h_last).float(), tokenizer.decode_prefix(s1, s2))  # type: ignore[arg-type]


def decode_paths(predictor: KronosPredictor, tokenizer: KronosTokenizer, prefix: Prefix, y_stamp: Tensor,
                 u: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Sample n paths per origin from the shared prefix.

    y_stamp [O, H, 5]: stamps of the bars to predict; u [O, n, H, 2]: uniforms for (s1, s2) of each step.
    Returns normalised values [O, n, H, 6]. Position t carries bar t's stamp, so the stamp of a new bar is
    fed only when that bar becomes context.
    """
    o, n, horizon, _ = u.shape
    b = o * n
    p = prefix.blocks[0][0].shape[2]
    rope = predictor.rope(p + horizon, y_stamp.device)
    cache = new_path_cache(prefix.blocks, n, horizon)  # per-path K/V of every block
    dep_cache = new_path_cache([prefix.dep], n, horizon)[0]  # and of the dependency layer
    stamp = y_stamp.repeat_interleave(n, dim=0)  # [B, H, 5]
    u = u.reshape(b, horizon, 2)
    s1_all = torch.empty(b, horizon, dtype=torch.long, device=u.device)
    s2_all = torch.empty_like(s1_all)
    logits = prefix.logits_s1.repeat_interleave(n, dim=0)
    h_last = prefix.h_last.repeat_interleave(n, dim=0)
    for i in range(horizon):
        s1 = sample_tokens(logits, u[:, i, 0], temperature, top_k, top_p)
        dk, dv = dep_cache[0, :, :, :, :i], dep_cache[1, :, :, :, :i]
        s2 = sample_tokens(predictor.s2_logits(s1, h_last, prefix.dep, dk, dv), u[:, i, 1], temperature, top_k, top_p)
        s1_all[:, i], s2_all[:, i] = s1, s2
        if i + 1 == horizon:
            break
        h = predictor.forward_cached(s1[:, None], s2[:, None], stamp[:, i : i + 1], prefix.blocks, cache, i, rope)
        k, v = predictor.dep_layer.keys_values(h)
        dep_cache[0, :, :, :, i : i + 1] = to_path_layout(k, o)
        dep_cache[1, :, :, :, i : i + 1] = to_path_layout(v, o)
        h_last = h[:, 0]
        logits = predictor.head.proj_s1(h_last)
    out = tokenizer.decode_new(s1_all, s2_all, prefix.decoder)  # the tokenizer's decoder is causal too
    return out.view(o, n, horizon, -1)


def bytes_per_path(predictor: KronosPredictor, tokenizer: KronosTokenizer, p: int, horizon: int, elem: int) -> int:
    """Rough peak working set of one path: its K/V caches plus the largest transient tensors of a step."""
    pc, tc = predictor.cfg, tokenizer.cfg
    kv = 2 * horizon * pc.d_model * (pc.n_layers + 1) * elem
    scores = 3 * pc.n_heads * (p + horizon) * 4
    vocab = 2 ** max(pc.s1_bits, pc.s2_bits) * 4 * 8  # softmax, sort values/indices, cumsum, masks
    ffn = 3 * pc.ff_dim * elem
    tok_kv = 2 * horizon * tc.d_model * max(tc.n_dec_layers - 1, 1) * 4
    tok_scores = 3 * tc.n_heads * horizon * (p + horizon) * 4 + 3 * horizon * tc.ff_dim * 4
    return kv + scores + vocab + ffn + tok_kv + tok_scores


def bytes_per_origin(predictor: KronosPredictor, tokenizer: KronosTokenizer, p: int, elem: int) -> int:
    """Rough memory of one origin's prefix caches plus the transient activations of its prefill."""
    pc, tc = predictor.cfg, tokenizer.cfg
    caches = p * (2 * pc.d_model * (pc.n_layers + 1) * elem + 2 * tc.d_model * max(tc.n_dec_layers - 1, 1) * 4)
    transient = p * (3 * pc.ff_dim + 6 * pc.d_model) * elem + p * 3 * tc.ff_dim * 4
    return caches + transient


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def time_features(ts: Any) -> np.ndarray:
    """Wall-clock (minute, hour, weekday Monday=0, day, month) of pandas timestamps, in their own timezone."""
    import pandas as pd

    idx = pd.DatetimeIndex(ts)
    return np.stack([idx.minute, idx.hour, idx.day_of_week, idx.day, idx.month], axis=-1).astype(np.int64)


def frame_to_arrays(df: Any, x_timestamp: Any, y_timestamp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one pandas boundary: DataFrame + timestamps -> values [P, 6] float32, stamps [P, 5], [H, 5]."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise ValueError("df must be a pandas DataFrame")
    missing = [c for c in COLUMNS[:4] if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks required column(s) {missing}; it needs open, high, low, close "
                         "(volume and amount are optional)")
    cols = {c: df[c].to_numpy(dtype=np.float64) for c in COLUMNS if c in df.columns}
    if "volume" not in cols:  # upstream rule: no volume means no volume and no amount
        cols["volume"] = cols["amount"] = np.zeros(len(df))
    elif "amount" not in cols:
        cols["amount"] = cols["volume"] * np.mean([cols[c] for c in COLUMNS[:4]], axis=0)
    values = np.stack([cols[c] for c in COLUMNS], axis=-1)
    if not np.isfinite(values).all():
        bad = [c for j, c in enumerate(COLUMNS) if not np.isfinite(values[:, j]).all()]
        raise ValueError(f"df has NaN or infinite values in column(s) {bad}")
    try:
        x_idx, y_idx = pd.DatetimeIndex(x_timestamp), pd.DatetimeIndex(y_timestamp)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"x_timestamp and y_timestamp must be pandas datetimes: {exc}") from exc
    if len(x_idx) != len(df):
        raise ValueError(f"x_timestamp has {len(x_idx)} entries but df has {len(df)} rows")
    if len(df) == 0 or len(y_idx) == 0:
        raise ValueError("need at least one context row and one y_timestamp")
    stamps = x_idx.append(y_idx)
    if stamps.hasnans or not (stamps[1:] > stamps[:-1]).all():
        raise ValueError("timestamps must be strictly increasing: x_timestamp, then y_timestamp after it")
    return values.astype(np.float32), time_features(x_idx), time_features(y_idx)


def check_sampling(n_paths: int, temperature: float, top_k: int, top_p: float) -> None:
    if int(n_paths) != n_paths or n_paths < 1:
        raise ValueError(f"n_paths must be a positive integer, got {n_paths}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 disables it), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


class KronosPathSampler:
    """Draws many Kronos forecast paths from one context.

    Contexts longer than the checkpoint's window are not supported: lookback + horizon must be at most
    max_context, otherwise sample() raises ValueError (upstream would re-encode a sliding window, which a
    KV cache cannot reproduce).

    Origins and paths are split into groups/chunks sized from memory_budget (bytes, default 1 GiB on
    CPU/MPS, half the free memory on CUDA; the estimate is rough). Every path draws its random
    numbers up front from a CPU torch.Generator seeded with `seed` (two uniforms per step: s1 and s2), so a
    path's result depends on its index and the seed, not on the chunking or on the device's RNG; only
    floating-point differences of batch sizes or devices can change a draw that sits on a CDF boundary.
    """

    def __init__(self, predictor: KronosPredictor, tokenizer: KronosTokenizer, *, device: torch.device,
                 dtype: torch.dtype = torch.float32, max_context: int = 512, memory_budget: int | None = None):
        if dtype != torch.float32 and device.type != "cuda":
            raise ValueError(f"dtype {dtype} is only supported on CUDA; use float32 on {device.type}")
        self.device, self.dtype, self.max_context = device, dtype, int(max_context)
        self.predictor = predictor.to(device=device, dtype=dtype)
        self.tokenizer = tokenizer.to(device=device)  # kept in fp32: small, and its sign bits stay exact
        self.memory_budget = memory_budget
        self.model_source = self.tokenizer_source = None
        self.model_revision = self.tokenizer_revision = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "NeoQuasar/Kronos-small",
                        tokenizer: str | os.PathLike = "NeoQuasar/Kronos-Tokenizer-base", device: Any = None,
                        max_context: int | None = None, model_revision: str | None = None,
                        tokenizer_revision: str | None = None, dtype: str | torch.dtype = "float32",
                        memory_budget: int | None = None) -> "KronosPathSampler":
        """Load from hub repo ids (through the huggingface_hub cache) or local directories.

        Raises CheckpointError when weights cannot be found, read or fitted; ValueError for a bad dtype/device.
        """
        torch_dtype, dev = to_dtype(dtype), pick_device(device)
        if torch_dtype != torch.float32 and dev.type != "cuda":
            raise ValueError(f"dtype {torch_dtype} is only supported on CUDA; use float32 on {dev.type}")
        pred, model_rev = load_predictor(model, model_revision)
        tok, tok_rev = load_tokenizer(tokenizer, tokenizer_revision)
        ctx = max_context if max_context is not None else default_context(str(model), pred.cfg)
        sampler = cls(pred, tok, device=dev, dtype=torch_dtype, max_context=ctx, memory_budget=memory_budget)
        sampler.model_source, sampler.tokenizer_source = model, tokenizer
        sampler.model_revision, sampler.tokenizer_revision = model_rev, tok_rev
        return sampler

    def sample(self, df: Any, x_timestamp: Any, y_timestamp: Any, n_paths: int = 100, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 0.9, seed: int | None = None) -> np.ndarray:
        """Sample paths: float64 array [n_paths, len(y_timestamp), 6] (open, high, low, close, volume, amount)."""
        return self.sample_batch([df], [x_timestamp], [y_timestamp], n_paths, temperature, top_k, top_p, seed)[0]

    def sample_batch(self, dfs: Sequence[Any], x_timestamps: Sequence[Any], y_timestamps: Sequence[Any],
                     n_paths: int = 100, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.9,
                     seed: int | None = None) -> np.ndarray:
        """Many origins with equal lookback and horizon at once -> [n_origins, n_paths, horizon, 6].

        Origin o's paths use the uniforms of generator stream position o, so results differ from calling
        sample() per origin with the same seed (except for origin 0).
        """
        check_sampling(n_paths, temperature, top_k, top_p)
        if not len(dfs) == len(x_timestamps) == len(y_timestamps) or len(dfs) == 0:
            raise ValueError("dfs, x_timestamps and y_timestamps must be non-empty and of equal length")
        arrays = [frame_to_arrays(*a) for a in zip(dfs, x_timestamps, y_timestamps)]
        if len({(a[0].shape[0], a[2].shape[0]) for a in arrays}) > 1:
            raise ValueError("all origins must have the same lookback and horizon")
        lookback, horizon = arrays[0][0].shape[0], arrays[0][2].shape[0]
        if lookback + horizon > self.max_context:
            raise ValueError(f"lookback {lookback} + horizon {horizon} exceeds max_context {self.max_context}: "
                             f"shorten the lookback to at most {self.max_context - horizon} rows")
        x = np.stack([a[0] for a in arrays])
        mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
        x_norm = np.clip((x - mean) / (std + 1e-5), -CLIP, CLIP)
        n_origins = len(arrays)
        gen = torch.Generator(device="cpu")
        if seed is None:
            gen.seed()  # fresh entropy for this generator only; the global RNG is untouched
        else:
            gen.manual_seed(seed)
        u = torch.rand(n_origins, int(n_paths), horizon, 2, generator=gen)
        out = self._run(torch.from_numpy(x_norm), torch.from_numpy(np.stack([a[1] for a in arrays])),
                        torch.from_numpy(np.stack([a[2] for a in arrays])), u, float(temperature), int(top_k),
                        float(top_p))
        return out.astype(np.float64) * (std[:, None] + 1e-5) + mean[:, None]

    @torch.inference_mode()
    def _run(self, x: Tensor, x_stamp: Tensor, y_stamp: Tensor, u: Tensor, temperature: float, top_k: int,
             top_p: float) -> np.ndarray:
        dev = self.device
        n_origins, n_paths, horizon, _ = u.shape
        groups, chunk = self.plan(x.shape[1], horizon, n_origins, n_paths)
        parts = []
        for o0 in range(0, n_origins, groups):  # origins whose prefixes fit in memory together
            o1 = min(o0 + groups, n_origins)
            prefix = prefill(self.predictor, self.tokenizer, x[o0:o1].to(dev), x_stamp[o0:o1].to(dev))
            ys = y_stamp[o0:o1].to(dev)
            row = [decode_paths(self.predictor, self.tokenizer, prefix, ys, u[o0:o1, p0 : p0 + chunk].to(dev),
                                temperature, top_k, top_p).float().cpu() for p0 in range(0, n_paths, chunk)]
            parts.append(torch.cat(row, dim=1))
        return torch.cat(parts, dim=0).numpy()

    def budget(self) -> int:
        """Bytes we may use for caches and activations (default: 1 GiB, or half the free GPU memory)."""
        if self.memory_budget is not None:
            return int(self.memory_budget)
        if self.device.type == "cuda":
            return max(1 << 30, torch.cuda.mem_get_info(self.device)[0] // 2)
        return 1 << 30

    def plan(self, lookback: int, horizon: int, n_origins: int, n_paths: int) -> tuple[int, int]:
        """(origins prefilled together, paths per origin decoded together) that fit the memory budget."""
        per_origin = bytes_per_origin(self.predictor, self.tokenizer, lookback, self.dtype.itemsize)
        per_path = bytes_per_path(self.predictor, self.tokenizer, lookback, horizon, self.dtype.itemsize)
        budget = self.budget()
        groups = max(1, min(n_origins, budget // (per_origin + n_paths * per_path)))
        chunk = max(1, min(n_paths, (budget - groups * per_origin) // (groups * per_path)))
        return groups, chunk
