"""Monte Carlo error of what we estimate from N sampled paths (pure numpy/scipy, no I/O).

The paths are exchangeable draws given the context, so these are exact statements about sampling error only:
how far the number could move if we drew other paths from the same model. They say nothing about model error,
which is what calibration measures.

* A probability estimated as k of N paths: the Jeffreys interval, Beta(k + 1/2, N - k + 1/2) quantiles, with the
  bound at 0 (k = 0) or 1 (k = N) taken exactly. Unlike the Wald interval it does not collapse to a point at
  k = 0 or k = N, and its coverage stays close to nominal at N = 50..1,000.
* A quantile of the paths: the distribution-free pair of order statistics X(r) <= q <= X(s) with r and s from
  Binomial(N, level) quantiles; no density estimate. A bound that N paths cannot give is infinite.
* A mean: its standard error, the sample standard deviation over sqrt(N).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Jeffreys interval for a probability seen as k successes in n draws."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1.0 - confidence) / 2.0
    lo = 0.0 if k == 0 else float(stats.beta.ppf(tail, k + 0.5, n - k + 0.5))
    hi = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 0.5, n - k + 0.5))
    return lo, hi


def order_statistic_ranks(n: int, level: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """1-based ranks (r, s) with P(X(r) <= q_level <= X(s)) >= confidence for any continuous distribution.

    The count B of draws below the true quantile is Binomial(n, level); X(r) <= q iff B >= r and X(s) >= q iff
    B < s. r = 0 or s = n + 1 means N draws cannot bound that side.
    """
    if n < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    tail = (1.0 - confidence) / 2.0
    r = int(stats.binom.ppf(tail, n, level))
    s = int(stats.binom.ppf(1.0 - tail, n, level)) + 1
    return r, min(s, n + 1)


def quantile_interval(values: np.ndarray, level: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Order-statistic interval for the ``level`` quantile of the distribution ``values`` were drawn from."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    r, s = order_statistic_ranks(len(x), level, confidence)
    lo = float(x[r - 1]) if r >= 1 else -math.inf
    hi = float(x[s - 1]) if s <= len(x) else math.inf
    return lo, hi


def quantile_intervals(values: np.ndarray, levels: Sequence[float],
                       confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """quantile_interval for several levels and along the first axis at once: values [N, ...] -> (lo, hi), each
    [len(levels), ...]; -inf / inf where N draws cannot bound a side. One sort serves every level."""
    x = np.sort(np.asarray(values, dtype=float), axis=0)
    n = x.shape[0]
    padded = np.concatenate([np.full((1, *x.shape[1:]), -math.inf), x, np.full((1, *x.shape[1:]), math.inf)])
    ranks = np.array([order_statistic_ranks(n, level, confidence) for level in levels], dtype=int).reshape(-1, 2)
    return padded[ranks[:, 0]], padded[ranks[:, 1]]  # rank r is row r of the padded sort (row 0: -inf)


def share_interval(share: float | None, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """proportion_interval of a share already computed as k / n (None stays None)."""
    if share is None:
        return None
    return list(proportion_interval(int(round(share * n)), n, confidence))


def mean_standard_error(values: np.ndarray) -> float:
    """Standard error of the sample mean (NaN for fewer than two values)."""
    x = np.asarray(values, dtype=float).ravel()
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) >= 2 else math.nan


def map_interval(interval: tuple[float, float] | list[float], maps: list) -> tuple[float, float]:
    """An interval for a probability after monotone maps (Platt, isotonic, online Platt): each map's image of
    [lo, hi] lies between the images of its ends, which swap when a map decreases (a Platt slope below 0)."""
    lo, hi = (float(x) for x in interval)
    for f in maps:
        a, b = float(f(lo)), float(f(hi))
        lo, hi = min(a, b), max(a, b)
    return lo, hi
