"""Token decoding with fixed shapes, so that one step can be captured in a CUDA graph and replayed for the rest.

A decode step of Kronos-small launches a few hundred small kernels. For N = 100 paths on a GPU, issuing them from
Python takes longer than running them. With static caches (KVCache in static mode) every step after the first has
the same shapes and reads its position from the device, so one captured step serves all of them: the launch cost
is paid once per call instead of once per step.

A DecodePlan keeps those buffers and the graph for the next call of the same shapes (a warm process: the service,
a backtest, the chunks of a large N). The graph reads fixed addresses, so a later call copies its prefix caches
and inputs into the plan's own tensors instead of allocating new ones.

The step draws nucleus tokens through the full sort (filter_logits_full_sort), the rule that sampler.nucleus_keep
reproduces from a partial selection: the same kept set, without the host-side checks a graph cannot hold.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Hashable

import torch
from torch import Tensor

from .layers import Attention, KVCache
from .model import Kronos

log = logging.getLogger(__name__)

SampleFn = Callable[[Tensor, Tensor], Tensor]  # (logits [B, V], uniforms [B]) -> tokens [B]


class StaticDecode:
    """Draws H token pairs for B paths from static caches. h0 [B, d]: each path's last context hidden state;
    stamp [B, H, 5]: stamps of the bars to predict; u [B, H, 2]: the uniforms of each step's s1 and s2 draw.

    Call model.setup_paths(n, H, static=True) first. Buffers and the position t live on the device, and every
    method below reads and writes only them and the static caches, so a CUDA graph captured from advance() stays
    valid for as long as they do (DecodePlan keeps them).
    """

    def __init__(self, model: Kronos, h0: Tensor, stamp: Tensor, u: Tensor, sample: SampleFn):
        b, horizon = u.shape[:2]
        self.model, self.stamp, self.u, self.sample = model, stamp, u.clone(), sample  # u may be the caller's view
        self.horizon = horizon
        self.t = torch.zeros(1, dtype=torch.long, device=u.device)  # the token pair being drawn
        self.h = h0.clone()
        self.s1 = torch.zeros(b, horizon, dtype=torch.long, device=u.device)
        self.s2 = torch.zeros_like(self.s1)
        self.replay: Callable[[], None] | None = None  # advance() captured in a CUDA graph

    def draw(self) -> None:
        """Draw token pair t of every path from its hidden state h."""
        u = self.u.index_select(1, self.t)[:, 0]
        s1 = self.sample(self.model.s1_logits(self.h), u[:, 0])
        s2 = self.sample(self.model.s2_logits(s1, self.h), u[:, 1])
        self.s1.index_copy_(1, self.t, s1[:, None])
        self.s2.index_copy_(1, self.t, s2[:, None])

    def advance(self) -> None:
        """Feed token pair t with its bar's stamp, then draw pair t + 1."""
        pick = lambda x: x.index_select(1, self.t)[:, 0]  # noqa: E731
        self.h.copy_(self.model.step(pick(self.s1), pick(self.s2), pick(self.stamp)))
        self.t.add_(1)
        self.draw()

    def run(self, graph: bool) -> tuple[Tensor, Tensor]:
        """All H pairs -> (s1, s2) [B, H]. graph: replay a captured advance() for the later steps (CUDA only);
        it is captured on the first run, after one eager step that warms up its kernels, and kept for the next."""
        self.draw()
        steps = self.horizon - 1
        if graph and self.replay is None and steps > 1:
            self.advance()
            steps -= 1
            self.replay = capture(self.advance)
        for _ in range(steps):
            self.replay() if graph and self.replay is not None else self.advance()
        return self.s1, self.s2


class DecodePlan:
    """A StaticDecode and the static caches it reads, kept for the next call of the same shapes."""

    def __init__(self, model: Kronos, decode: StaticDecode):
        self.decode = decode
        self.caches = [(m, m.cache) for m in model.modules() if isinstance(m, Attention) and m.cache is not None]
        self.rope = model.rope_new

    def reload(self, model: Kronos, h0: Tensor, stamp: Tensor, u: Tensor) -> StaticDecode:
        """Take this call's prefix caches (from prefill) and inputs into the plan's tensors, and install its caches."""
        for module, cache in self.caches:
            fresh: KVCache = module.cache  # type: ignore[assignment]
            if fresh is None or fresh.pk.shape != cache.pk.shape:
                raise RuntimeError("decode plan does not match the prefilled caches")
            cache.pk.copy_(fresh.pk)
            cache.pv.copy_(fresh.pv)
            for t in (cache.k, cache.v, cache.filled):
                t.zero_()  # type: ignore[union-attr]
            module.cache = cache
        model.rope_new = self.rope
        d = self.decode
        d.h.copy_(h0)
        d.stamp.copy_(stamp)
        d.u.copy_(u)
        d.t.zero_()
        return d


class DecodePlans:
    """The most recent plans, by shape and sampling settings (a few: each holds its caches and graph memory)."""

    def __init__(self, size: int = 2):
        self.size = size
        self.plans: OrderedDict[Hashable, DecodePlan] = OrderedDict()

    def decode(self, key: Hashable, model: Kronos, h0: Tensor, stamp: Tensor, u: Tensor, sample: SampleFn,
               n_paths: int) -> StaticDecode:
        """A StaticDecode ready to run for this call: the kept plan reloaded, or a new plan (static caches set up)."""
        plan = self.plans.get(key)
        if plan is not None:
            self.plans.move_to_end(key)
            return plan.reload(model, h0, stamp, u)
        # This plan's own cache objects, sharing the prefix tensors (every reload copies the prefix in): one
        # prefill decoded in chunks of two sizes makes two plans, and the second must not resize the first's slots
        for m in model.modules():
            if isinstance(m, Attention) and m.cache is not None:
                m.cache = KVCache(m.cache.pk, m.cache.pv)
        model.setup_paths(n_paths, u.shape[1], static=True)
        decode = StaticDecode(model, h0, stamp, u, sample)
        self.plans[key] = DecodePlan(model, decode)
        while len(self.plans) > self.size:
            self.plans.popitem(last=False)
        return decode

    def clear(self) -> None:
        self.plans.clear()


_capture_failed = False
_side_streams: dict[torch.device, torch.cuda.Stream] = {}


def capture(fn: Callable[[], None]) -> Callable[[], None] | None:
    """fn captured in a CUDA graph (its replay), or None when capture fails: then the caller runs fn eagerly,
    which gives the same results, and the failure is logged once per process.

    Captured on a side stream that waits for the work queued so far, without torch.cuda.graph's device-wide
    synchronize and empty_cache: those cost a stall and fresh cudaMallocs on every call, and the graph needs
    neither (it gets its own memory pool and is replayed on the current stream, after that work).
    """
    global _capture_failed
    if _capture_failed:
        return None
    try:
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream()
        side = _side_streams.setdefault(current.device, torch.cuda.Stream(current.device))
        side.wait_stream(current)
        with torch.cuda.stream(side):
            graph.capture_begin(capture_error_mode="thread_local")  # other threads may use CUDA meanwhile
            try:
                fn()
            finally:
                graph.capture_end()
        current.wait_stream(side)
    except Exception as exc:  # torch raises several types for ops that cannot be captured
        _capture_failed = True
        log.warning("CUDA graph capture failed, decoding without graphs (slower, same results): %s",
                    " ".join(str(exc).split())[:300])
        return None
    return graph.replay
