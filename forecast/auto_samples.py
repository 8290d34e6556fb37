"""n_samples: auto. Draw one origin's paths in chunks until P(up) is known precisely enough.

Stops at the first of: the 95 % Monte Carlo interval of P(up) (Jeffreys, forecast/mc_error.py) has half-width at
most ``p_up_precision`` ("precision"); ``max_samples`` paths are drawn ("max_samples"); the next chunk would not
finish before the sampling deadline ("time_budget"). The chunks come from one PathStream (kronos/stream.py), so
the N paths of a run that stops at N are exactly those of a fixed run of N with the same seed: chunking never
changes a path, only how many are drawn.

The next chunk is sized to what the interval still needs (the normal approximation of the paths needed at the
current estimate), at most doubling the count so far, and cut to what the measured rate fits in half the time
left before the deadline (the cost of writing every path out counted too).
Stopping on the data could in principle bias the interval; the rule looks only at its width, which depends on
the estimate through p(1 - p) alone, and tests/test_auto_samples.py checks the coverage after such a stop.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from forecast.mc_error import proportion_interval

# The first chunk measures the rate; small, so that a slow or busy CPU does not overshoot a short budget with it
# (Kronos-small on a loaded 2-core machine took 40-80 s for 100 paths). Later chunks at most double the count.
FIRST_CHUNK = 20
MIN_CHUNK = 10     # a chunk this small is not worth its decode overhead when time is short
# Seconds each path costs after sampling (metrics and the four paths CSVs: about 0.7 ms on a laptop-class CPU),
# counted against the deadline so that a fast GPU does not draw more paths than the run can still write.
AFTER_S_PER_PATH = 1e-3
# A chunk takes at most this share of the time left: the rate is measured on the previous chunk, and a machine that
# slows down meanwhile (other processes) would otherwise carry the last chunk past the deadline. The chunks shrink
# toward the deadline instead.
FILL = 0.5
Z95 = 1.959964


@dataclass
class AutoResult:
    paths: np.ndarray                       # [N, H, 6], in draw order
    stopped: str                            # precision, max_samples or time_budget
    chunks: list[int] = field(default_factory=list)
    half_width: float = math.nan            # of P(up)'s 95 % interval at N

    def block(self, precision: float, max_samples: int) -> dict[str, Any]:
        """The summary's ``sampling`` block: how many paths, and why sampling stopped."""
        return {"n_samples": "auto", "p_up_precision": precision, "max_samples": max_samples,
                "stopped": self.stopped, "chunks": self.chunks, "p_up_half_width": round(self.half_width, 6)}


def next_chunk(k: int, n: int, precision: float, max_samples: int) -> int:
    """Paths to draw next after k of n paths went up: enough for the target at the current estimate by the
    normal approximation (at least 1), at most n more (doubling), never past max_samples."""
    p = (k + 0.5) / (n + 1.0)
    need = math.ceil(Z95**2 * p * (1.0 - p) / precision**2)
    return max(1, min(need - n, n, max_samples - n))


def sample_until_precise(draw: Callable[[int], np.ndarray], now_close: float, precision: float, max_samples: int,
                         deadline: float, clock: Callable[[], float] = time.perf_counter) -> AutoResult:
    """Call ``draw(n)`` (the next n paths [n, H, 6]) until a stop rule holds; ``deadline`` on ``clock``."""
    parts: list[np.ndarray] = []
    chunks: list[int] = []
    size, k, n = min(FIRST_CHUNK, max_samples), 0, 0
    while True:
        t0 = clock()
        part = draw(size)
        seconds_per_path = (clock() - t0) / size
        parts.append(part)
        chunks.append(size)
        k += int((part[:, -1, 3] > now_close).sum())
        n += size
        lo, hi = proportion_interval(k, n)
        half = (hi - lo) / 2.0
        if half <= precision:
            stopped = "precision"
            break
        if n >= max_samples:
            stopped = "max_samples"
            break
        size = next_chunk(k, n, precision, max_samples)
        fits = FILL * (deadline - clock() - n * AFTER_S_PER_PATH) / (seconds_per_path + AFTER_S_PER_PATH)  # paths
        if fits < size:
            if fits < MIN_CHUNK:
                stopped = "time_budget"
                break
            size = int(fits)
    return AutoResult(np.concatenate(parts), stopped, chunks, half)
