"""Scores for probabilistic forecasts of the horizon close: probability scores for p_up / p_hit_vwap,
ensemble scores for the price distribution, a Diebold-Mariano test, and a count of independent windows.

Conventions
-----------
* Binary outcomes ``y`` are 0/1 arrays, probabilities ``p`` lie in [0, 1].
* Ensembles are arrays whose LAST axis holds the members (``[..., M]``); observations match the leading axes.
* The Brier decomposition bins forecasts into ``n_bins`` equal-width bins on [0, 1] (default 10: [0, 0.1),
  [0.1, 0.2), ..., [0.9, 1.0], the last bin closed). With binning, Brier = REL - RES + UNC + ``within_bin``;
  ``within_bin`` is reported so that the parts add up exactly (it vanishes when forecasts take one value per bin).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scoringrules as sr
from scipy import stats

DEFAULT_BINS = 10
LOG_LOSS_EPS = 1e-6


def _as_binary(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if p.shape != y.shape:
        raise ValueError(f"p and y differ in length: {p.shape} vs {y.shape}")
    keep = np.isfinite(p) & np.isfinite(y)  # unresolved outcomes are NaN and simply not scored
    return np.clip(p[keep], 0.0, 1.0), y[keep]


def bin_index(p: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Equal-width bin of each probability; p == 1 falls in the last bin."""
    return np.minimum((np.asarray(p, dtype=float) * n_bins).astype(int), n_bins - 1)


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    p, y = _as_binary(p, y)
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def brier_decomposition(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Murphy decomposition of the Brier score over equal-width bins (see module docstring)."""
    p, y = _as_binary(p, y)
    n = p.size
    if n == 0:
        return {k: math.nan for k in ("brier", "reliability", "resolution", "uncertainty", "within_bin")} | {
            "n": 0, "n_bins": n_bins}
    k = bin_index(p, n_bins)
    counts = np.bincount(k, minlength=n_bins).astype(float)
    used = counts > 0
    mean_p = np.bincount(k, weights=p, minlength=n_bins)[used] / counts[used]
    freq = np.bincount(k, weights=y, minlength=n_bins)[used] / counts[used]
    base = y.mean()
    rel = float(np.sum(counts[used] * (mean_p - freq) ** 2) / n)
    res = float(np.sum(counts[used] * (freq - base) ** 2) / n)
    unc = float(base * (1.0 - base))
    bs = float(np.mean((p - y) ** 2))
    return {"brier": bs, "reliability": rel, "resolution": res, "uncertainty": unc,
            "within_bin": bs - (rel - res + unc), "n": int(n), "n_bins": n_bins}


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """Mean negative log-likelihood, with p clipped to [eps, 1 - eps] so one 0/1 forecast cannot make it infinite."""
    p, y = _as_binary(p, y)
    if p.size == 0:
        return math.nan
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def hit_rate(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Share of directional calls that came true: p > 0.5 calls up, p < 0.5 calls down, p == 0.5 makes no call."""
    p, y = _as_binary(p, y)
    called = p != 0.5
    n = int(called.sum())
    hits = ((p > 0.5) == (y > 0.5))[called]
    return {"hit_rate": float(hits.mean()) if n else math.nan, "n_called": n, "n": int(p.size)}


def reliability_table(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS, z: float = 1.96) -> pd.DataFrame:
    """One row per non-empty bin: forecast mean, observed frequency and its Wilson interval (for the diagram)."""
    p, y = _as_binary(p, y)
    k = bin_index(p, n_bins)
    rows = []
    for b in np.unique(k):
        sel = k == b
        n = int(sel.sum())
        f = float(y[sel].mean())
        centre = (f + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        rows.append({"bin_lo": b / n_bins, "bin_hi": (b + 1) / n_bins, "n": n, "mean_p": float(p[sel].mean()),
                     "obs_freq": f, "obs_lo": max(0.0, centre - half), "obs_hi": min(1.0, centre + half)})
    return pd.DataFrame(rows, columns=["bin_lo", "bin_hi", "n", "mean_p", "obs_freq", "obs_lo", "obs_hi"])


def crps_fair(obs: np.ndarray, ens: np.ndarray) -> np.ndarray:
    """Fair (unbiased-in-ensemble-size) CRPS of each ensemble: E|X-y| - sum_{i,j}|x_i-x_j| / (2 M (M-1))."""
    ens = np.asarray(ens, dtype=float)
    if ens.shape[-1] < 2:
        raise ValueError("the fair CRPS needs at least two members")
    return np.asarray(sr.crps_ensemble(np.asarray(obs, dtype=float), ens, estimator="fair", backend="numpy"))


def ensemble_quantiles(ens: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of each ensemble at ``levels``: shape [..., L] (linear interpolation between order statistics)."""
    return np.moveaxis(np.quantile(np.asarray(ens, dtype=float), np.asarray(levels, dtype=float), axis=-1), 0, -1)


def pinball_loss(q: np.ndarray, obs: np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """Quantile (pinball) loss of the quantile forecast ``q`` at ``level`` for ``obs`` (elementwise)."""
    d = np.asarray(obs, dtype=float) - np.asarray(q, dtype=float)
    tau = np.asarray(level, dtype=float)
    return np.maximum(tau * d, (tau - 1.0) * d)


@dataclass(frozen=True)
class Band:
    lo: float
    hi: float

    @property
    def name(self) -> str:
        return f"p{round(self.lo * 100):02d}_p{round(self.hi * 100):02d}"

    @property
    def nominal(self) -> float:
        return self.hi - self.lo


DEFAULT_BANDS = (Band(0.05, 0.95), Band(0.10, 0.90), Band(0.25, 0.75))


def band_coverage(lo: np.ndarray, hi: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Share of origins whose outcome fell inside [lo, hi], per step: inputs [O, H] -> [H] (NaN rows skipped)."""
    lo, hi, obs = (np.asarray(a, dtype=float) for a in (lo, hi, obs))
    ok = np.isfinite(obs) & np.isfinite(lo) & np.isfinite(hi)
    inside = (obs >= lo) & (obs <= hi) & ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return inside.sum(axis=0) / ok.sum(axis=0)


def pit_values(ens: np.ndarray, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised PIT of ``obs`` within each ensemble: (#below + U * (#equal + 1)) / (M + 1), U ~ Uniform(0, 1).

    Uniform on (0, 1) when the outcome is exchangeable with the members; ties (flat prices are common at the
    tick size) are spread at random instead of piling at one end. NaN outcomes give NaN."""
    ens = np.asarray(ens, dtype=float)
    obs = np.asarray(obs, dtype=float)
    below = (ens < obs[..., None]).sum(axis=-1)
    equal = (ens == obs[..., None]).sum(axis=-1)
    u = rng.uniform(size=obs.shape)
    pit = (below + u * (equal + 1)) / (ens.shape[-1] + 1)
    return np.where(np.isfinite(obs), pit, np.nan)


def pit_histogram(pit: np.ndarray, n_bins: int = 10) -> dict[str, list[float] | float]:
    """Counts of PIT values per equal bin and a chi-square test of uniformity (optimistic under overlap)."""
    pit = np.asarray(pit, dtype=float)
    pit = pit[np.isfinite(pit)]
    counts = np.bincount(bin_index(pit, n_bins), minlength=n_bins) if pit.size else np.zeros(n_bins, int)
    p_value = float(stats.chisquare(counts).pvalue) if pit.size else math.nan
    return {"edges": list(np.linspace(0, 1, n_bins + 1)), "counts": [int(c) for c in counts],
            "chi2_p_value": p_value}


def newey_west_variance(d: np.ndarray, lags: int) -> float:
    """Long-run variance of a series with Bartlett weights 1 - k/(lags+1) (always >= 0)."""
    d = np.asarray(d, dtype=float)
    n = d.size
    e = d - d.mean()
    lrv = float(e @ e) / n
    for k in range(1, min(lags, n - 1) + 1):
        lrv += 2.0 * (1.0 - k / (lags + 1.0)) * float(e[k:] @ e[:-k]) / n
    return lrv


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, h: int = 1,
                    lags: int | None = None) -> dict[str, float]:
    """Diebold-Mariano test of equal expected loss; negative statistic = A has the lower loss.

    ``h`` is the overlap of consecutive forecast windows in origins (ceil(horizon / spacing)): windows that
    overlap make the loss differential autocorrelated up to lag h - 1, so the default HAC lag count is h - 1.
    The variance is Newey-West (Bartlett), and the statistic gets the Harvey-Leybourne-Newbold (1997)
    small-sample factor sqrt((n + 1 - 2h + h(h - 1)/n) / n) with a Student-t(n - 1) p-value (two-sided)."""
    a = np.asarray(loss_a, dtype=float)
    b = np.asarray(loss_b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = d.size
    lags = max(h - 1, 0) if lags is None else lags
    out = {"n": int(n), "h": int(h), "lags": int(lags), "mean_diff": math.nan, "stat": math.nan,
           "p_value": math.nan}
    if n < 3:
        return out
    var = newey_west_variance(d, lags) / n
    mean = float(d.mean())
    out["mean_diff"] = mean
    if var <= 0:
        return out
    hln = math.sqrt(max(n + 1 - 2 * h + h * (h - 1) / n, 0.0) / n)
    stat = mean / math.sqrt(var) * hln
    out["stat"] = float(stat)
    out["p_value"] = float(2 * stats.t.sf(abs(stat), df=n - 1))
    return out


def independent_windows(origins: pd.DatetimeIndex, horizon_min: int,
                        session: np.ndarray | pd.Series | None = None) -> dict[str, int]:
    """How many non-overlapping forecast windows the origins contain.

    Greedy within each session: keep an origin when it starts at or after the end of the last kept window
    (origin + horizon). With origins every k minutes this is about (RTH span / horizon) per session."""
    origins = pd.DatetimeIndex(origins)
    if session is None:
        session = origins.tz_convert("America/New_York").date if origins.tz is not None else origins.date
    frame = pd.DataFrame({"t": origins, "s": np.asarray(session)}).sort_values("t")
    horizon = pd.Timedelta(minutes=horizon_min)
    kept = 0
    for _, grp in frame.groupby("s", sort=False):
        end = None
        for t in grp["t"]:
            if end is None or t >= end:
                kept += 1
                end = t + horizon
    return {"n_origins": int(len(origins)), "n_sessions": int(frame["s"].nunique()),
            "n_independent": int(kept)}
