"""Calibration of p_up (and p_hit_vwap) and of the per-step price bands, fitted walk-forward, saved as JSON.

Probability calibration
    Platt scaling (logistic regression of the outcome on logit(p)) while fewer than ``ISOTONIC_MIN_N`` (500)
    outcomes are known; isotonic regression from then on (it needs many outcomes not to overfit its steps).
    Below ``MIN_FIT_N`` (30) outcomes, or with a single class, the calibrator is the identity.

Band calibration (split-conformal on normalised scores, per step)
    For each step h the ensemble of closes is summarised by its log-return median m_h and scale
    s_h = (q90 - q10) / 2.5631 (the 10-90 range of a normal is 2.5631 sigma). The score of an outcome y is
    z = (log(y / now_close) - m_h) / s_h. The calibrated tau-quantile is now_close * exp(m_h + s_h * Q_h(tau)),
    where Q_h is the empirical quantile function of past scores at step h. This widens bands that were too
    narrow (which a pure re-levelling of the ensemble cannot: a 25 %-coverage ensemble has no members far enough
    out). It also stores the PIT quantiles per step, so ``adjust_levels`` says which raw ensemble levels achieved
    the requested ones historically (saturating at 0 / 1 when the ensemble is too narrow).

Walk-forward
    An outcome of an origin t with horizon H resolves at t + H; a forecast at origin u may use it only when
    t + H <= u. The walk-forward functions refit every ``refit_every`` newly resolved outcomes.

JSON format: see ``Calibrator.to_dict``; no pickle anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.artifacts import atomic_write_text

FORMAT = "qqq-kronos-calibrator"
VERSION = 1
MIN_FIT_N = 30
ISOTONIC_MIN_N = 500
P_CLIP = 1e-3  # logit(p) is taken of p clipped to [P_CLIP, 1 - P_CLIP]; ensembles give exact 0 and 1
IQR_TO_SIGMA = 2.5631  # q90 - q10 of a standard normal
SCALE_FLOOR = 1e-6  # log-return scale floor: an ensemble of identical paths must not divide by zero
LEVEL_GRID = np.round(np.linspace(0.005, 0.995, 199), 6)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), P_CLIP, 1.0 - P_CLIP)
    return np.log(p / (1.0 - p))


def _iso(t: Any) -> str | None:
    return None if t is None else pd.Timestamp(t).isoformat()


@dataclass
class ProbabilityCalibrator:
    """Maps a raw probability to a calibrated one. ``method`` is identity, platt or isotonic."""
    method: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)
    n: int = 0
    fit_window: tuple[str | None, str | None] = (None, None)

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray, times: pd.DatetimeIndex | None = None,
            isotonic_min: int = ISOTONIC_MIN_N, min_n: int = MIN_FIT_N) -> "ProbabilityCalibrator":
        p = np.asarray(p, dtype=float)
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(p) & np.isfinite(y)
        p, y = p[ok], y[ok]
        window = (None, None)
        if times is not None and ok.any():
            t = pd.DatetimeIndex(times)[ok]
            window = (_iso(t.min()), _iso(t.max()))
        n = int(p.size)
        if n < min_n or np.unique(y).size < 2:
            return cls("identity", {}, n, window)
        # sklearn loads only when a calibrator is fitted, never on the live forecast's path
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        if n >= isotonic_min:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}, n, window)
        # Large C: Platt needs no shrinkage with two parameters and >= 30 outcomes.
        lr = LogisticRegression(C=1e4).fit(_logit(p)[:, None], y.astype(int))
        return cls("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}, n, window)

    def apply(self, p: np.ndarray | float) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        if self.method == "identity":
            return p.copy()
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.params["a"] * _logit(p) + self.params["b"])))
        if self.method == "isotonic":
            out = np.interp(p, self.params["x"], self.params["y"])
            eps = 1.0 / (self.n + 2)  # never claim certainty the outcomes cannot back
            return np.clip(out, eps, 1.0 - eps)
        raise ValueError(f"unknown probability calibration method {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "n": self.n,
                "fit_window": {"start": self.fit_window[0], "end": self.fit_window[1]}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbabilityCalibrator":
        w = d.get("fit_window") or {}
        return cls(d["method"], dict(d.get("params", {})), int(d.get("n", 0)), (w.get("start"), w.get("end")))



def band_score(outcome: np.ndarray, now_close: np.ndarray | float, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The normalised band score z = (log(outcome / now_close) - centre) / scale of realised closes (NaN where
    the outcome is unknown). now_close broadcasts against outcome's leading axes."""
    now = np.asarray(now_close, dtype=float)
    y = np.asarray(outcome, dtype=float)
    now = now.reshape(now.shape + (1,) * (y.ndim - now.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.log(y / now) - centre) / scale


def ensemble_centre_scale(close_paths: np.ndarray, now_close: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Median and 10-90 scale of log(close / now_close) over members: close_paths [..., M, H] -> two [..., H]."""
    now = np.asarray(now_close, dtype=float)[..., None, None]
    r = np.log(np.asarray(close_paths, dtype=float) / now)
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9], axis=-2)
    return q50, np.maximum((q90 - q10) / IQR_TO_SIGMA, SCALE_FLOOR)



def band_scores(close_paths: np.ndarray, now_close: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """Normalised scores z of realised closes: close_paths [O, M, H], now_close [O], outcome [O, H] -> [O, H]."""
    m, s = ensemble_centre_scale(close_paths, now_close)
    return band_score(outcome, now_close, m, s)


def _grid_quantiles(x: np.ndarray) -> list[float] | None:
    x = x[np.isfinite(x)]
    return np.quantile(x, LEVEL_GRID).tolist() if x.size >= MIN_FIT_N else None


@dataclass
class BandCalibrator:
    """Per-step score quantiles (and PIT quantiles) on ``LEVEL_GRID``; steps are 1-based minutes ahead."""
    score_q: dict[int, list[float]] = field(default_factory=dict)
    pit_q: dict[int, list[float]] = field(default_factory=dict)
    n: int = 0
    fit_window: tuple[str | None, str | None] = (None, None)

    @classmethod
    def fit(cls, scores: np.ndarray, pit: np.ndarray | None = None, steps: list[int] | None = None,
            times: pd.DatetimeIndex | None = None) -> "BandCalibrator":
        """scores (and pit) [O, S] for the 1-based ``steps`` (default 1..S)."""
        scores = np.atleast_2d(np.asarray(scores, dtype=float))
        steps = list(range(1, scores.shape[1] + 1)) if steps is None else list(steps)
        score_q = {h: q for h, col in zip(steps, scores.T) if (q := _grid_quantiles(col)) is not None}
        pit_q: dict[int, list[float]] = {}
        if pit is not None:
            pit = np.atleast_2d(np.asarray(pit, dtype=float))
            pit_q = {h: q for h, col in zip(steps, pit.T) if (q := _grid_quantiles(col)) is not None}
        n = int(np.isfinite(scores).all(axis=1).sum())
        window = (None, None)
        if times is not None and len(times):
            window = (_iso(pd.DatetimeIndex(times).min()), _iso(pd.DatetimeIndex(times).max()))
        return cls(score_q, pit_q, n, window)

    @property
    def fitted(self) -> bool:
        return bool(self.score_q)

    @staticmethod
    def _nearest(table: dict[int, list[float]], step: int) -> list[float]:
        # Steps never fitted (a run log holds only the horizon end) borrow the nearest fitted step.
        return table[min(table, key=lambda k: (abs(k - step), -k))]

    def score_quantile(self, step: int, levels: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(levels, dtype=float), LEVEL_GRID, self._nearest(self.score_q, step))

    def adjust_levels(self, levels: np.ndarray, n_steps: int) -> np.ndarray:
        """Raw ensemble levels that achieved the requested ``levels`` historically: [n_steps, L] (PIT mapping)."""
        levels = np.asarray(levels, dtype=float)
        if not self.pit_q:
            return np.tile(levels, (n_steps, 1))
        return np.stack([np.interp(levels, LEVEL_GRID, self._nearest(self.pit_q, h)) for h in range(1, n_steps + 1)])

    def band_quantiles(self, close_paths: np.ndarray, now_close: float, levels: np.ndarray) -> np.ndarray:
        """Calibrated price quantiles [L, H] from one forecast's close paths [M, H]."""
        m, s = ensemble_centre_scale(close_paths, now_close)
        levels = np.asarray(levels, dtype=float)
        if not self.fitted:
            r = np.log(np.asarray(close_paths, dtype=float) / now_close)
            return now_close * np.exp(np.quantile(r, levels, axis=0))
        z = np.stack([self.score_quantile(h, levels) for h in range(1, m.shape[-1] + 1)], axis=-1)  # [L, H]
        return now_close * np.exp(m[None, :] + s[None, :] * z)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "conformal-normalised", "level_grid": LEVEL_GRID.tolist(),
                "score_quantiles": {str(k): v for k, v in self.score_q.items()},
                "pit_quantiles": {str(k): v for k, v in self.pit_q.items()}, "n": self.n,
                "fit_window": {"start": self.fit_window[0], "end": self.fit_window[1]}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BandCalibrator":
        if not np.allclose(d.get("level_grid", LEVEL_GRID), LEVEL_GRID):
            raise ValueError("band calibrator saved with another level grid")
        w = d.get("fit_window") or {}
        return cls({int(k): list(v) for k, v in d.get("score_quantiles", {}).items()},
                   {int(k): list(v) for k, v in d.get("pit_quantiles", {}).items()},
                   int(d.get("n", 0)), (w.get("start"), w.get("end")))


@dataclass
class Calibrator:
    """Everything the forecast CLI needs to report calibrated numbers next to raw ones."""
    horizon_min: int
    p_up: ProbabilityCalibrator = field(default_factory=ProbabilityCalibrator)
    p_hit_vwap: ProbabilityCalibrator = field(default_factory=ProbabilityCalibrator)
    bands: BandCalibrator = field(default_factory=BandCalibrator)
    meta: dict[str, Any] = field(default_factory=dict)

    def apply_p_up(self, p: np.ndarray | float) -> np.ndarray:
        return self.p_up.apply(p)

    apply = apply_p_up

    def apply_p_hit_vwap(self, p: np.ndarray | float) -> np.ndarray:
        return self.p_hit_vwap.apply(p)

    def adjust_levels(self, levels: np.ndarray, n_steps: int | None = None) -> np.ndarray:
        return self.bands.adjust_levels(levels, n_steps or self.horizon_min)

    def band_quantiles(self, close_paths: np.ndarray, now_close: float, levels: np.ndarray) -> np.ndarray:
        return self.bands.band_quantiles(close_paths, now_close, levels)

    def side_by_side(self, p_up: float, now_close: float, close_paths: np.ndarray | None = None,
                     p_hit_vwap: float | None = None,
                     levels: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)) -> dict[str, Any]:
        """Raw and calibrated values for one live forecast; close_paths [M, H] adds per-step bands."""
        out: dict[str, Any] = {"p_up_raw": float(p_up), "p_up_cal": float(self.apply_p_up(p_up)),
                               "p_up_method": self.p_up.method}
        if p_hit_vwap is not None:
            out |= {"p_hit_vwap_raw": float(p_hit_vwap), "p_hit_vwap_cal": float(self.apply_p_hit_vwap(p_hit_vwap))}
        if close_paths is not None:
            cp = np.asarray(close_paths, dtype=float)
            lv = np.asarray(levels, dtype=float)
            out["levels"] = list(levels)
            out["bands_raw"] = np.quantile(cp, lv, axis=0).tolist()
            out["bands_cal"] = self.band_quantiles(cp, now_close, lv).tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "horizon_min": self.horizon_min,
                "created_utc": self.meta.get("created_utc") or datetime.now(timezone.utc).isoformat(),
                "meta": self.meta, "p_up": self.p_up.to_dict(), "p_hit_vwap": self.p_hit_vwap.to_dict(),
                "bands": self.bands.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibrator":
        if d.get("format") != FORMAT or int(d.get("version", -1)) > VERSION:
            raise ValueError(f"not a calibrator this code can read: format={d.get('format')} "
                             f"version={d.get('version')}")
        meta = dict(d.get("meta", {}))
        meta.setdefault("created_utc", d.get("created_utc"))
        return cls(int(d["horizon_min"]), ProbabilityCalibrator.from_dict(d["p_up"]),
                   ProbabilityCalibrator.from_dict(d.get("p_hit_vwap", {"method": "identity"})),
                   BandCalibrator.from_dict(d.get("bands", {})), meta)

    @classmethod
    def identity(cls, horizon_min: int) -> "Calibrator":
        return cls(horizon_min)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibrator":
        return cls.from_dict(json.loads(Path(path).read_text()))


def load_calibrator(path: str | Path) -> Calibrator:
    """The calibrator saved by backtest.py (or fitted from a run log); ValueError for another file format."""
    return Calibrator.load(path)

