"""Online calibration that follows the day: one implementation for the live service, the cron CLI and the backtest.

Bands: adaptive conformal inference (ACI, Gibbs & Candes 2021), one tracker per horizon step and quantile level.
    The band's tau-quantile at step h is now_close * exp(m_h + s_h * Q(w)), with m_h, s_h the ensemble's
    log-return median and 10-90 scale (forecast.calibrator's normalised score) and Q the score quantile function
    of the walk-forward calibrator (the standard normal one when there is none: s_h is a sigma for a normal
    ensemble). The working level w starts at tau; when the outcome of a forecast resolves, b = 1 if the realised
    close was at or below the quantile that forecast issued, and w <- w + gamma * (tau - b). Q(w) is -inf for
    w <= 0 and +inf for w >= 1, so w stays in [-gamma, 1 + gamma] and, for ANY sequence of outcomes,
    |mean(b) - tau| <= (max(w1, 1 - w1) + gamma) / (gamma * T) after T updates (with d forecasts outstanding
    when each resolves, gamma in the numerator becomes gamma * (1 + d)). A band [q_lo, q_hi] then covers
    tau_hi - tau_lo of outcomes in the long run. Q may change between forecasts (a refitted calibrator): the
    bound does not care.

Probabilities: online Platt scaling by online Newton steps (Gupta & Ramdas 2023): p_online = sigmoid(a * logit(p)
    + b) on the walk-forward calibrated p (raw p without a calibrator), starting from a = 1, b = 0, i.e. exactly
    the warm start. Each resolved outcome y takes one ONS step on the log loss, theta <- theta - A^-1 g / beta with
    A = eps * I + sum of g g^T, theta kept in a box. ONS has logarithmic regret against the best fixed Platt map in
    hindsight on any sequence of outcomes, drifting or not.

Updates are applied only for outcomes resolved by now, in resolution order; the caller says when. numpy only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

FORMAT = "qqq-kronos-online-calibration"
VERSION = 1
GAMMA = 0.01  # ACI step; chosen on the real QQQ bars (docs/honest-probabilities.md)
P_CLIP = 1e-3
ONS_BETA = 1.0
ONS_EPS = 20.0  # A starts at eps * I: the warm start counts as about eps / 0.25 = 80 outcomes
THETA_BOX = 5.0
RECENT = 240  # resolved outcomes kept for trust.status


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), P_CLIP, 1.0 - P_CLIP)
    return np.log(p / (1.0 - p))


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


_PPF = np.vectorize(NormalDist().inv_cdf, otypes=[float])


def score_quantile(w: np.ndarray, grid: np.ndarray | None = None, table: np.ndarray | None = None) -> np.ndarray:
    """Q(w) elementwise: -inf for w <= 0, +inf for w >= 1, else the table (one row per step, broadcast over the
    last axis of w: w [H, L], table [H, G] on ``grid``) interpolated, or the standard normal quantile."""
    w = np.asarray(w, dtype=float)
    out = np.where(w <= 0, -np.inf, np.inf)
    inner = (w > 0) & (w < 1)
    if table is None:
        out[inner] = _PPF(w[inner])
        return out
    table = np.asarray(table, dtype=float)
    vals = np.stack([np.interp(w[i], grid, table[i]) for i in range(w.shape[0])])
    return np.where(inner, vals, out)


@dataclass
class OnlinePlatt:
    """Online Platt scaling by online Newton steps; see the module docstring."""
    theta: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0]))
    A: np.ndarray = field(default_factory=lambda: ONS_EPS * np.eye(2))
    n: int = 0
    beta: float = ONS_BETA

    def predict(self, p: np.ndarray | float) -> np.ndarray:
        return _sigmoid(self.theta[0] * logit(p) + self.theta[1])

    def update(self, p: float, y: float) -> None:
        if not (math.isfinite(p) and math.isfinite(y)):
            return
        x = np.array([float(logit(p)), 1.0])
        g = (float(_sigmoid(self.theta @ x)) - y) * x  # gradient of the log loss in theta
        self.A = self.A + np.outer(g, g)
        self.theta = np.clip(self.theta - np.linalg.solve(self.A, g) / self.beta, -THETA_BOX, THETA_BOX)
        self.n += 1

    def to_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.tolist(), "A": self.A.tolist(), "n": self.n, "beta": self.beta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OnlinePlatt":
        return cls(np.array(d["theta"], float), np.array(d["A"], float), int(d["n"]), float(d.get("beta", ONS_BETA)))


@dataclass
class OnlineCalibrator:
    """ACI trackers [horizon, levels] for the bands and one online Platt map per probability key."""
    horizon: int
    levels: tuple[float, ...]
    gamma: float = GAMMA
    w: np.ndarray | None = None  # working levels [H, L]
    n_band: np.ndarray | None = None  # updates per step
    probs: dict[str, OnlinePlatt] = field(default_factory=dict)
    last_resolved: str | None = None  # ISO time of the last outcome applied: a resumed run skips what it has seen
    meta: dict[str, Any] = field(default_factory=dict)
    recent: list[dict[str, Any]] = field(default_factory=list)  # the last RECENT resolved outcomes, for trust

    def __post_init__(self) -> None:
        self.levels = tuple(float(x) for x in self.levels)
        if self.w is None:
            self.w = np.tile(np.array(self.levels), (self.horizon, 1))
        if self.n_band is None:
            self.n_band = np.zeros(self.horizon, dtype=int)

    # ---- bands
    def working_levels(self) -> np.ndarray:
        """w [H, L]; a step that has seen no outcome yet (the cron CLI learns the horizon's end only) borrows the
        nearest step that has, as the walk-forward calibrator does."""
        seen = np.nonzero(self.n_band > 0)[0]
        if seen.size == 0 or seen.size == self.horizon:
            return self.w
        nearest = seen[np.abs(np.arange(self.horizon)[:, None] - seen[None, :]).argmin(axis=1)]
        return np.where((self.n_band > 0)[:, None], self.w, self.w[nearest])

    def band_quantiles(self, centre: np.ndarray, scale: np.ndarray, now_close: float,
                       grid: np.ndarray | None = None, table: np.ndarray | None = None) -> np.ndarray:
        """Online price quantiles [H, L] of one forecast from its per-step centre and scale ([H] each)."""
        z = score_quantile(self.working_levels(), grid, table)
        with np.errstate(over="ignore", invalid="ignore"):
            return now_close * np.exp(np.asarray(centre)[:, None] + np.asarray(scale)[:, None] * z)

    def update_band(self, step: int, issued: np.ndarray, realised: float) -> None:
        """One resolved outcome at 1-based ``step``: ``issued`` the quantiles [L] that forecast published."""
        if not math.isfinite(realised):
            return
        below = (realised <= np.asarray(issued, dtype=float)).astype(float)
        self.w[step - 1] += self.gamma * (np.array(self.levels) - below)
        self.n_band[step - 1] += 1

    # ---- probabilities
    def platt(self, key: str) -> OnlinePlatt:
        return self.probs.setdefault(key, OnlinePlatt())

    def prob(self, key: str, p_base: np.ndarray | float) -> np.ndarray:
        return self.platt(key).predict(p_base)

    def update_prob(self, key: str, p_base: float, y: float) -> None:
        self.platt(key).update(float(p_base), float(y))

    # ---- state
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "horizon": self.horizon, "levels": list(self.levels),
                "gamma": self.gamma, "w": self.w.tolist(), "n_band": self.n_band.tolist(),
                "probs": {k: v.to_dict() for k, v in self.probs.items()}, "last_resolved": self.last_resolved,
                "meta": self.meta, "recent": self.recent}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OnlineCalibrator":
        if d.get("format") != FORMAT or int(d.get("version", -1)) > VERSION:
            raise ValueError(f"not an online calibration state: format={d.get('format')} version={d.get('version')}")
        return cls(int(d["horizon"]), tuple(d["levels"]), float(d["gamma"]), np.array(d["w"], float),
                   np.array(d["n_band"], int), {k: OnlinePlatt.from_dict(v) for k, v in d.get("probs", {}).items()},
                   d.get("last_resolved"), dict(d.get("meta", {})), list(d.get("recent", [])))

    def save(self, path: str | Path) -> Path:
        from forecast.artifacts import atomic_write_text  # the project's one atomic writer

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "OnlineCalibrator":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def remember(self, origin: str, session: str, inside: float, p_up: float, up: float) -> None:
        """Keep one resolved outcome of a published forecast (the online band's coverage, the stated P(up))."""
        num = lambda x: None if x is None or not math.isfinite(float(x)) else float(x)  # noqa: E731 - JSON has no NaN
        self.recent = (self.recent + [{"origin": origin, "session": session, "inside": num(inside),
                                       "p_up": num(p_up), "up": num(up)}])[-RECENT:]

    @property
    def learnt(self) -> bool:
        return bool(self.n_band.any() or any(v.n for v in self.probs.values()))

    def matches(self, horizon: int, levels: tuple[float, ...]) -> bool:
        return self.horizon == horizon and np.allclose(self.levels, levels)


def score_table(band_calibrator: Any, horizon: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(grid, table [H, G]) of a fitted forecast.calibrator.BandCalibrator, or None (normal quantiles then)."""
    if band_calibrator is None or not getattr(band_calibrator, "fitted", False):
        return None
    from forecast.calibrator import LEVEL_GRID

    return LEVEL_GRID, np.stack([band_calibrator.score_quantile(h, LEVEL_GRID) for h in range(1, horizon + 1)])


def online_values(online: OnlineCalibrator, calibrator: Any, horizon: int, p_up: float, p_hit_vwap: float | None,
                  close_paths: np.ndarray, now_close: float, keys: list[str],
                  calibrated: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's ``online`` block: P(up) and P(touch VWAP) recalibrated online on top of the walk-forward
    values (raw ones without a calibrator), and the online per-minute bands at the summary's percentile keys."""
    from forecast.calibrator import ensemble_centre_scale

    cal = calibrated or {}
    base_up = cal.get(f"p_up_{horizon}m", p_up)
    out: dict[str, Any] = {f"p_up_{horizon}m": float(online.prob("p_up", base_up)), "p_up_base": float(base_up),
                           "n_updates": int(online.platt("p_up").n), "band_updates": online.n_band.tolist(),
                           "gamma": online.gamma}
    if p_hit_vwap is not None:
        base_v = cal.get(f"p_hit_vwap_{horizon}m", p_hit_vwap)
        out[f"p_hit_vwap_{horizon}m"] = float(online.prob("p_hit_vwap", base_v))
        out["p_hit_vwap_base"] = float(base_v)
    centre, scale = ensemble_centre_scale(close_paths, now_close)
    table = score_table(getattr(calibrator, "bands", None), horizon)
    grid, tab = table if table is not None else (None, None)
    q = online.band_quantiles(centre, scale, now_close, grid, tab)  # [H, L]
    out["percentiles"] = {k: [float(x) for x in q[:, j]] for j, k in enumerate(keys)}
    return out
