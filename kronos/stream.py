"""One origin's paths drawn on demand, for sampling until an estimate is precise enough (n_samples: auto).

The context is encoded and prefilled once, on entering the ``with`` block; each draw(n) decodes the next n paths
from the shared prefix caches with the next n blocks of uniforms of the origin's own generator. A path's tokens
depend only on the context, its uniforms and the settings (the same rule that makes the sampler's chunking
invisible), so any sequence of draws gives the paths of one ``sample`` call for all of them with the same seed.
The model's caches belong to the stream until the block ends: no other sampling may run on the sampler meanwhile.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from .inputs import check_sampling, check_stamps, check_values, generator, normalise
from .layers import clear_caches


class StreamSampler(Protocol):
    """What a stream uses of the sampler (KronosPathSampler), which builds streams: its networks, device and context,
    the prefill and decode steps, and the memory plan."""
    model: Any
    tokenizer: Any
    device: torch.device
    max_context: int

    def prefill(self, x: torch.Tensor, x_stamp: torch.Tensor) -> torch.Tensor: ...
    def decode(self, h0: torch.Tensor, y_stamp: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int,
               top_p: float, chunk: int) -> Any: ...
    def plan(self, lookback: int, horizon: int, n_origins: int, n_paths: int) -> tuple[int, int]: ...


class PathStream:
    def __init__(self, sampler: StreamSampler, values: Any, x_stamp: Any, y_stamp: Any, temperature: float,
                 top_k: int, top_p: float, seed: int | None) -> None:
        check_sampling(1, temperature, top_k, top_p)
        x = check_values(values, 2)  # [1, P, 6]
        xs = check_stamps(x_stamp, "x_stamp", 2, 1, x.shape[1])
        ys = check_stamps(y_stamp, "y_stamp", 2, 1, None)
        self.lookback, self.horizon = x.shape[1], ys.shape[1]
        if self.lookback + self.horizon > sampler.max_context:
            raise ValueError(f"lookback {self.lookback} + horizon {self.horizon} exceeds max_context "
                             f"{sampler.max_context}: shorten the lookback to at most "
                             f"{sampler.max_context - self.horizon} rows")
        self.sampler, self.settings = sampler, (float(temperature), int(top_k), float(top_p))
        x_norm, self.mean, self.scale = normalise(x)
        self.x, self.x_stamp, self.y_stamp = (torch.from_numpy(x_norm.astype(np.float32)), torch.from_numpy(xs),
                                              torch.from_numpy(ys))
        self.gen = generator(seed)
        self.h0: torch.Tensor | None = None
        self.drawn = 0

    def __enter__(self) -> PathStream:
        with torch.inference_mode():
            self.h0 = self.sampler.prefill(self.x, self.x_stamp)
        return self

    def __exit__(self, *exc: object) -> None:
        self.h0 = None
        self.sampler.model.clear_caches()
        clear_caches(self.sampler.tokenizer)

    @torch.inference_mode()
    def draw(self, n: int) -> np.ndarray:
        """The next n paths, float64 [n, H, 6] in the units of values."""
        if self.h0 is None:
            raise RuntimeError("draw() outside the stream's with block")
        if n < 1:
            raise ValueError(f"draw at least one path, not {n}")
        u = torch.rand(n, self.horizon, 2, generator=self.gen)[None]
        _, chunk = self.sampler.plan(self.lookback, self.horizon, 1, n)
        out = self.sampler.decode(self.h0, self.y_stamp.to(self.sampler.device), u, *self.settings, chunk)
        self.drawn += n
        return (out.values.numpy().astype(np.float64) * self.scale[:, None] + self.mean[:, None])[0]
