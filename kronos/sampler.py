"""Path sampling: encode and prefill each context once, then decode all its paths together from the shared cache.

Token draws follow the upstream predictor (temperature, then top-k or nucleus filtering), but by inverting the
filtered CDF at uniforms drawn up front from each origin's own CPU generator, so an origin's paths depend only on
its inputs and its seed: not on the other origins of the batch, the chunking, or any device RNG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import default_context
from .graphs import DecodePlans
from .inputs import check_sampling, check_seeds, check_stamps, check_values, generator, normalise
from .layers import clear_caches
from .loading import load_pair, to_dtype
from .model import Kronos, KronosTokenizer
from .stream import PathStream


NUCLEUS_K0 = 64  # first partial selection for top-p; grows x4 only for rows whose kept mass is not reached
# New tokens per tokenizer-decoder call (see decode_paths): few on a CPU, where the attention scores should stay in
# cache; many on a GPU, where each call is a few dozen kernel launches.
TOKENIZER_ROWS = 768
TOKENIZER_ROWS_CUDA = 16384
# Cumulative masses this close to top_p are decided by float32 rounding, which depends on the summation order of
# the softmax; such rows go through the full sort so that the kept set is exactly the full-sort rule's.
NUCLEUS_GUARD = 1e-4


def nucleus_keep(x: Tensor, probs: Tensor, top_p: float, k0: int = NUCLEUS_K0) -> Tensor:
    """Boolean mask [B, V] of the upstream nucleus: the smallest descending prefix whose cumulative probability
    reaches top_p, plus the token that crosses it (rank r > 0 is kept iff cum[r - 1] <= top_p).

    The same set as sorting every row (filter_logits_full_sort), from a top-k partial selection. Rows where the
    full sort's own arbitrariness shows (tied logits across the cut: torch.sort's tie order decides; a cumulative
    mass within float rounding of top_p) are rare and go through the full sort itself.
    """
    v = x.shape[-1]
    k = min(k0, v)
    while True:
        vals, idx = x.topk(k, dim=-1)  # logits, descending
        cum = probs.gather(-1, idx).cumsum(-1)
        if k == v or not bool((cum[:, -1] <= top_p).any()):
            break  # every row's cut lies within the first k ranks
        k = min(4 * k, v)
    count = 1 + (cum[:, : v - 1] <= top_p).sum(-1, keepdim=True)  # kept ranks per row, <= k
    cut = vals.gather(-1, count - 1)  # logit at the last kept rank
    keep = x >= cut
    nxt = count.clamp(max=k - 1)  # the first dropped rank, where there is one
    doubtful = (count < k) & (vals.gather(-1, nxt) == cut)  # a tie straddles the cut
    above = cum.gather(-1, count - 1)  # the mass that closes the nucleus (> top_p where count < v)
    doubtful |= (count < v) & (above - top_p <= NUCLEUS_GUARD)
    below = cum.gather(-1, (count - 2).clamp(min=0))  # the last mass <= top_p
    doubtful |= (count >= 2) & (top_p - below <= NUCLEUS_GUARD)
    if bool(doubtful.any()):
        rows = doubtful[:, 0].nonzero()[:, 0]
        keep[rows] = filter_logits_full_sort(x[rows], top_p) > float("-inf")
    return keep


def filter_logits_full_sort(x: Tensor, top_p: float) -> Tensor:
    """The upstream nucleus rule on full sorts: logits with removed tokens set to -inf."""
    ordered, order = torch.sort(x, dim=-1, descending=True)
    drop = ordered.softmax(-1).cumsum(-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # shift right: the crossing token stays
    drop[..., 0] = False
    return x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def keep_mask(x: Tensor, probs: Tensor, top_k: int, top_p: float, full_sort: bool = False) -> Tensor | None:
    """Tokens that survive filtering (None: all). top_k > 0 keeps ties of the k-th value and ignores top_p.
    full_sort: the nucleus through the full sort (the same set, with no host-side checks: CUDA graphs)."""
    if top_k > 0:
        kth = x.topk(min(top_k, x.shape[-1]), dim=-1).values[:, -1:]
        return x >= kth
    if top_p < 1.0:
        return filter_logits_full_sort(x, top_p) > float("-inf") if full_sort else nucleus_keep(x, probs, top_p)
    return None


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Copy of logits [B, V] with the filtered-out tokens set to -inf (the upstream top_k_top_p_filtering)."""
    x = logits.float()
    keep = keep_mask(x, x.softmax(-1), top_k, top_p)
    return logits if keep is None else logits.masked_fill(~keep, float("-inf"))


def sample_tokens(logits: Tensor, u: Tensor, temperature: float, top_k: int, top_p: float,
                  full_sort: bool = False) -> Tensor:
    """Draw one token per row of logits [B, V] by inverting the filtered CDF (index order) at uniforms u [B]."""
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    probs = x.softmax(-1)
    keep = keep_mask(x, probs, top_k, top_p, full_sort)
    if keep is not None:
        probs.mul_(keep)  # renormalised by the CDF's total below
    cdf = probs.cumsum_(-1)
    # u < 1 keeps the threshold below the total mass, so the index lands on a token with probability > 0
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True)
    return idx.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


@dataclass
class Generated:
    values: Tensor  # [O, n, H, 6] normalised, float32
    s1: Tensor  # [O, n, H] tokens
    s2: Tensor


def decode_paths(model: Kronos, tokenizer: KronosTokenizer, h0: Tensor, y_stamp: Tensor, u: Tensor,
                 temperature: float, top_k: int, top_p: float, static: bool = False, graph: bool = False,
                 plans: DecodePlans | None = None, on_step: Callable[[], None] | None = None) -> Generated:
    """Sample n paths per origin after prefill. h0 [O, d]: last context hidden state; y_stamp [O, H, 5]: stamps
    of the bars to predict (a bar's stamp is fed only once that bar is context); u [O, n, H, 2] uniforms.
    static: fixed-shape decode steps (kronos.graphs); graph: also replay them from a CUDA graph; plans: where
    such decodes are kept for the next call of the same shapes; on_step: called after each decode step (a
    progress bar), after the whole decode when it runs as one plan."""
    o, n, horizon, _ = u.shape
    b = o * n
    h = h0.repeat_interleave(n, dim=0)
    stamp = y_stamp.repeat_interleave(n, dim=0)  # [B, H, 5]
    u = u.reshape(b, horizon, 2)
    if static or graph:
        draw = partial(sample_tokens, temperature=temperature, top_k=top_k, top_p=top_p, full_sort=True)
        key = (o, n, horizon, model.prefix_len, h.dtype, h.device, temperature, top_k, top_p)
        decode = (plans if plans is not None else DecodePlans(0)).decode(key, model, h, stamp, u, draw, n)
        s1_all, s2_all = (x.clone() for x in decode.run(graph))  # the plan's buffers are reused by the next call
        for _ in range(horizon if on_step is not None else 0):
            on_step()
    else:
        model.setup_paths(n, horizon)
        s1_all = torch.empty(b, horizon, dtype=torch.long, device=u.device)
        s2_all = torch.empty_like(s1_all)
        for i in range(horizon):
            s1 = sample_tokens(model.s1_logits(h), u[:, i, 0], temperature, top_k, top_p)
            s2 = sample_tokens(model.s2_logits(s1, h), u[:, i, 1], temperature, top_k, top_p)
            s1_all[:, i], s2_all[:, i] = s1, s2
            if i + 1 < horizon:
                h = model.step(s1, s2, stamp[:, i])
            if on_step is not None:
                on_step()
    s1_all, s2_all = s1_all.view(o, n, horizon), s2_all.view(o, n, horizon)
    # The tokenizer's decoder is causal too: each path's new tokens attend to the cached context. A few paths at
    # a time keep its attention scores ([paths x H, P + H] per head) small enough to stay in cache (CPU).
    rows = TOKENIZER_ROWS_CUDA if u.device.type == "cuda" else TOKENIZER_ROWS
    step = max(1, rows // (o * horizon))
    values = torch.cat([tokenizer.decode_paths(s1_all[:, j : j + step].reshape(-1, horizon),
                                               s2_all[:, j : j + step].reshape(-1, horizon)).view(o, -1, horizon, 6)
                        for j in range(0, n, step)], dim=1)
    return Generated(values, s1_all, s2_all)


def uniforms(seeds: Sequence[int | None], n_paths: int, horizon: int) -> Tensor:
    """[O, n, H, 2] uniforms for (s1, s2) of each step; origin o's come from its own generator and seed. Path i
    takes the i-th block of 2H numbers of that generator's stream, so drawing the paths in several calls on one
    generator (PathStream) gives each path the same uniforms as one call for all of them."""
    return torch.stack([torch.rand(n_paths, horizon, 2, generator=generator(seed)) for seed in seeds])


def bytes_per_path(model: Kronos, tokenizer: KronosTokenizer, p: int, horizon: int, elem: int) -> int:
    """Rough peak working set of one path: its K/V caches plus the largest transient tensors of a step."""
    pc, tc = model.cfg, tokenizer.cfg
    kv = 2 * horizon * pc.d_model * (pc.n_layers + 1) * elem
    scores = 3 * pc.n_heads * (p + horizon) * 4
    vocab = 2 ** max(pc.s1_bits, pc.s2_bits) * 4 * 8  # logits, probabilities, CDF, masks
    ffn = 3 * pc.ff_dim * elem
    tok_kv = 2 * horizon * tc.d_model * max(tc.n_dec_layers - 1, 1) * 4
    tok_scores = 3 * tc.n_heads * horizon * (p + horizon) * 4 + 3 * horizon * tc.ff_dim * 4
    return kv + scores + vocab + ffn + tok_kv + tok_scores


def bytes_per_origin(model: Kronos, tokenizer: KronosTokenizer, p: int, elem: int) -> int:
    """Rough memory of one origin's prefix caches plus the transient activations of its prefill."""
    pc, tc = model.cfg, tokenizer.cfg
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


class KronosPathSampler:
    """Draws many Kronos forecast paths per origin (a context of P bars and the H bars to forecast).

    lookback + horizon must be at most max_context, otherwise ValueError (upstream would re-encode a sliding
    window, which a KV cache cannot reproduce). Origins and paths are split into groups/chunks sized from
    memory_budget (bytes; default 1 GiB on CPU/MPS, half the free memory on CUDA; the estimate is rough).
    On CUDA each decode step after the first is replayed from a CUDA graph (cuda_graphs=False turns that off:
    the same sampling rule, launched step by step).
    """

    def __init__(self, model: Kronos, tokenizer: KronosTokenizer, *, device: torch.device,
                 dtype: torch.dtype = torch.float32, max_context: int = 512, memory_budget: int | None = None,
                 cuda_graphs: bool | None = None):
        """model and tokenizer as kronos.loading.load_pair returns them: fused, on device, model in dtype."""
        if dtype != torch.float32 and device.type != "cuda":
            raise ValueError(f"dtype {dtype} is only supported on CUDA; use float32 on {device.type}")
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, not {device.type}")
        self.device, self.dtype, self.max_context = device, dtype, int(max_context)
        self.model, self.tokenizer = model, tokenizer
        self.memory_budget = memory_budget
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        self.plans = DecodePlans()  # CUDA graphs and their buffers, kept for the next call of the same shapes
        self.model_source: Any = None
        self.tokenizer_source: Any = None
        self.model_revision: str | None = None
        self.tokenizer_revision: str | None = None
        # progress(done, total) of the decode steps of a sample_batch call (a terminal's bar); None: silent
        self.progress: Callable[[int, int], None] | None = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "NeoQuasar/Kronos-small",
                        tokenizer: str | os.PathLike = "NeoQuasar/Kronos-Tokenizer-base", device: Any = None,
                        max_context: int | None = None, model_revision: str | None = None,
                        tokenizer_revision: str | None = None, dtype: str | torch.dtype = "float32",
                        memory_budget: int | None = None, cuda_graphs: bool | None = None) -> "KronosPathSampler":
        """Load from hub repo ids (through the huggingface_hub cache) or local directories.

        Raises CheckpointError when weights cannot be found, read, validated or fitted; ValueError for a bad
        dtype/device.
        """
        torch_dtype, dev = to_dtype(dtype), pick_device(device)
        if torch_dtype != torch.float32 and dev.type != "cuda":
            raise ValueError(f"dtype {torch_dtype} is only supported on CUDA; use float32 on {dev.type}")
        net, tok, model_rev, tok_rev = load_pair(model, tokenizer, model_revision, tokenizer_revision, dev, torch_dtype)
        ctx = max_context if max_context is not None else default_context(str(model), net.cfg)
        sampler = cls(net, tok, device=dev, dtype=torch_dtype, max_context=ctx, memory_budget=memory_budget,
                      cuda_graphs=cuda_graphs)
        sampler.model_source, sampler.tokenizer_source = model, tokenizer
        sampler.model_revision, sampler.tokenizer_revision = model_rev, tok_rev
        return sampler

    def sample(self, values: Any, x_stamp: Any, y_stamp: Any, n_paths: int = 100, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 0.9, seed: int | None = None) -> np.ndarray:
        """One origin: values [P, 6], x_stamp [P, 5], y_stamp [H, 5] -> float64 paths [n_paths, H, 6].

        Exactly sample_batch(values[None], x_stamp[None], y_stamp[None], ..., seeds=[seed])[0].
        """
        x = check_values(values, 2)
        xs = check_stamps(x_stamp, "x_stamp", 2, 1, x.shape[1])
        ys = check_stamps(y_stamp, "y_stamp", 2, 1, None)
        return self.sample_batch(x, xs, ys, n_paths, temperature, top_k, top_p, seeds=[seed])[0]

    def sample_batch(self, values: Any, x_stamp: Any, y_stamp: Any, n_paths: int = 100, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 0.9, seeds: Sequence[int | None] | None = None) -> np.ndarray:
        """O origins with equal lookback P and horizon H -> float64 paths [O, n_paths, H, 6].

        values [O, P, 6] (open, high, low, close, volume, amount; see complete_columns), x_stamp [O, P, 5] and
        y_stamp [O, H, 5] integer (minute, hour, weekday Monday=0, day, month) of the context bars and of the bars
        to forecast. seeds: one int or None per origin (None: fresh OS entropy), or None for all fresh.
        Results come back in the units of values.
        """
        check_sampling(n_paths, temperature, top_k, top_p)
        x = check_values(values, 3)
        n_origins, lookback = x.shape[:2]
        xs = check_stamps(x_stamp, "x_stamp", 3, n_origins, lookback)
        ys = check_stamps(y_stamp, "y_stamp", 3, n_origins, None)
        horizon = ys.shape[1]
        if lookback + horizon > self.max_context:
            raise ValueError(f"lookback {lookback} + horizon {horizon} exceeds max_context {self.max_context}: "
                             f"shorten the lookback to at most {self.max_context - horizon} rows")
        u = uniforms(check_seeds(seeds, n_origins), int(n_paths), horizon)
        x_norm, mean, scale = normalise(x)
        out = self.run_normalised(torch.from_numpy(x_norm.astype(np.float32)), torch.from_numpy(xs),
                                  torch.from_numpy(ys), u, float(temperature), int(top_k), float(top_p))
        return out.values.numpy().astype(np.float64) * scale[:, None] + mean[:, None]

    @torch.inference_mode()
    def run_normalised(self, x: Tensor, x_stamp: Tensor, y_stamp: Tensor, u: Tensor, temperature: float,
                       top_k: int, top_p: float) -> Generated:
        """The engine on normalised float32 inputs x [O, P, 6] and uniforms u [O, n, H, 2] -> values (normalised)
        and tokens on the CPU. Origins are prefilled in groups and their paths decoded in chunks (memory plan)."""
        dev = self.device
        n_origins, n_paths, horizon, _ = u.shape
        groups, chunk = self.plan(x.shape[1], horizon, n_origins, n_paths)
        parts: list[Generated] = []
        total = -(-n_origins // groups) * -(-n_paths // chunk) * horizon
        done = [0]
        report = self.progress

        def on_step() -> None:
            done[0] += 1
            report(done[0], total)  # type: ignore[misc]
        try:
            for o0 in range(0, n_origins, groups):  # origins whose prefixes fit in memory together
                o1 = min(o0 + groups, n_origins)
                h0 = self.prefill(x[o0:o1], x_stamp[o0:o1])
                parts.append(self.decode(h0, y_stamp[o0:o1].to(dev), u[o0:o1], temperature, top_k, top_p, chunk,
                                         on_step=on_step if report is not None else None))
        finally:
            self.model.clear_caches()
            clear_caches(self.tokenizer)
        return Generated(*(torch.cat([getattr(g, f) for g in parts]) for f in ("values", "s1", "s2")))

    def prefill(self, x: Tensor, x_stamp: Tensor) -> Tensor:
        """Encode and prefill normalised contexts x [O, P, 6] (caches kept in the model and tokenizer until
        clear_caches); -> the last hidden state of each [O, d]."""
        dev = self.device
        xg = x.to(dev)
        s1, s2 = self.tokenizer.encode(xg)
        h0 = self.model.prefill(s1, s2, x_stamp.to(dev))
        self.tokenizer.decode_prefix(s1, s2)
        return h0

    def decode(self, h0: Tensor, y_stamp: Tensor, u: Tensor, temperature: float, top_k: int, top_p: float,
               chunk: int, on_step: Callable[[], None] | None = None) -> Generated:
        """Decode the paths of uniforms u [O, n, H, 2] after prefill, ``chunk`` paths per origin at a time;
        ``on_step`` after each decode step (a progress bar)."""
        row = [decode_paths(self.model, self.tokenizer, h0, y_stamp, u[:, p0 : p0 + chunk].to(self.device),
                            temperature, top_k, top_p, graph=self.cuda_graphs, plans=self.plans, on_step=on_step)
               for p0 in range(0, u.shape[1], chunk)]
        return Generated(*(torch.cat([getattr(g, f).float() if f == "values" else getattr(g, f) for g in row],
                                     dim=1).cpu() for f in ("values", "s1", "s2")))

    def open_stream(self, values: Any, x_stamp: Any, y_stamp: Any, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 0.9, seed: int | None = None) -> PathStream:
        """One origin's paths on demand (n_samples: auto): ``with sampler.open_stream(...) as s: s.draw(100)``.
        The context is prefilled once; draw(n) returns the next n paths, and the paths of any sequence of draws
        are the paths of one sample() call for all of them with the same seed."""
        return PathStream(self, values, x_stamp, y_stamp, temperature, top_k, top_p, seed)

    def budget(self) -> int:
        """Bytes we may use for caches and activations (default: 1 GiB, or half the free GPU memory)."""
        if self.memory_budget is not None:
            return int(self.memory_budget)
        if self.device.type == "cuda":
            return max(1 << 30, torch.cuda.mem_get_info(self.device)[0] // 2)
        return 1 << 30

    def plan(self, lookback: int, horizon: int, n_origins: int, n_paths: int) -> tuple[int, int]:
        """(origins prefilled together, paths per origin decoded together) that fit the memory budget."""
        per_origin = bytes_per_origin(self.model, self.tokenizer, lookback, self.dtype.itemsize)
        per_path = bytes_per_path(self.model, self.tokenizer, lookback, horizon, self.dtype.itemsize)
        budget = self.budget()
        groups = max(1, min(n_origins, budget // (per_origin + n_paths * per_path)))
        chunk = max(1, min(n_paths, (budget - groups * per_origin) // (groups * per_path)))
        return groups, chunk
