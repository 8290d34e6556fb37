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
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from market.artifacts import atomic_write_text

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


def ensemble_centre_scale(close_paths: np.ndarray, now_close: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Median and 10-90 scale of log(close / now_close) over members: close_paths [..., M, H] -> two [..., H]."""
    now = np.asarray(now_close, dtype=float)[..., None, None]
    r = np.log(np.asarray(close_paths, dtype=float) / now)
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9], axis=-2)
    return q50, np.maximum((q90 - q10) / IQR_TO_SIGMA, SCALE_FLOOR)


def band_scores(close_paths: np.ndarray, now_close: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """Normalised scores z of realised closes: close_paths [O, M, H], now_close [O], outcome [O, H] -> [O, H]."""
    m, s = ensemble_centre_scale(close_paths, now_close)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.log(np.asarray(outcome, dtype=float) / np.asarray(now_close, dtype=float)[:, None]) - m) / s


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


# ----------------------------------------------------------------------------------------------- walk-forward

def _fit_schedule(origins: pd.DatetimeIndex, resolve: pd.DatetimeIndex, usable: np.ndarray,
                  refit_every: int, min_n: int) -> list[tuple[int, np.ndarray]]:
    """(first origin position, outcome indices) of each refit; only outcomes with resolve <= origin count."""
    res_ns, origin_ns = resolve.as_unit("ns").asi8, origins.as_unit("ns").asi8
    order = np.argsort(res_ns, kind="stable")
    order = order[usable[order]]
    known = np.searchsorted(res_ns[order], origin_ns, side="right")  # outcomes known at each origin
    plan: list[tuple[int, np.ndarray]] = []
    last = -1
    for i, k in enumerate(known):
        if k >= min_n and (last < 0 or k - last >= refit_every):
            plan.append((i, order[:k]))
            last = k
    return plan


def walk_forward_probability(origins: pd.DatetimeIndex, p: np.ndarray, y: np.ndarray, horizon_min: int,
                             refit_every: int = 50, isotonic_min: int = ISOTONIC_MIN_N,
                             min_n: int = MIN_FIT_N) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Calibrated p for each origin from outcomes resolved before it (NaN until ``min_n`` are known).

    ``origins`` must be sorted. Returns (calibrated p, one record per refit)."""
    origins = pd.DatetimeIndex(origins)
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=float)
    resolve = origins + pd.Timedelta(minutes=horizon_min)
    usable = np.isfinite(p) & np.isfinite(y)
    out = np.full(p.shape, np.nan)
    plan = _fit_schedule(origins, resolve, usable, refit_every, min_n)
    fits = []
    for j, (start, idx) in enumerate(plan):
        stop = plan[j + 1][0] if j + 1 < len(plan) else len(origins)
        cal = ProbabilityCalibrator.fit(p[idx], y[idx], origins[idx], isotonic_min, min_n)
        out[start:stop] = cal.apply(p[start:stop])
        fits.append({"from_origin": _iso(origins[start]), "method": cal.method, "n": cal.n})
    return out, fits


def walk_forward_bands(origins: pd.DatetimeIndex, close_paths: np.ndarray, now_close: np.ndarray,
                       outcome: np.ndarray, horizon_min: int, levels: np.ndarray, refit_every: int = 50,
                       min_n: int = MIN_FIT_N) -> np.ndarray:
    """Walk-forward calibrated quantiles [O, L, H] (NaN until ``min_n`` windows have resolved).

    close_paths [O, M, H], now_close [O], outcome [O, H] (NaN where unknown)."""
    centre, scale = ensemble_centre_scale(close_paths, now_close)
    return walk_forward_bands_from_summary(origins, centre, scale, now_close, outcome, horizon_min, levels,
                                           refit_every, min_n)


def walk_forward_bands_from_summary(origins: pd.DatetimeIndex, centre: np.ndarray, scale: np.ndarray,
                                    now_close: np.ndarray, outcome: np.ndarray, horizon_min: int,
                                    levels: np.ndarray, refit_every: int = 50,
                                    min_n: int = MIN_FIT_N) -> np.ndarray:
    """As ``walk_forward_bands`` from each ensemble's log-return median and scale per step ([O, H] each),
    which is all the band calibration needs (a backtest stores these instead of every path)."""
    origins = pd.DatetimeIndex(origins)
    levels = np.asarray(levels, dtype=float)
    now = np.asarray(now_close, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (np.log(np.asarray(outcome, dtype=float) / now[:, None]) - centre) / scale
    usable = np.isfinite(scores).all(axis=1)
    plan = _fit_schedule(origins, origins + pd.Timedelta(minutes=horizon_min), usable, refit_every, min_n)
    out = np.full((len(origins), levels.size, centre.shape[-1]), np.nan)
    for j, (start, idx) in enumerate(plan):
        stop = plan[j + 1][0] if j + 1 < len(plan) else len(origins)
        cal = BandCalibrator.fit(scores[idx])
        z = np.stack([cal.score_quantile(h, levels) for h in range(1, centre.shape[-1] + 1)], axis=-1)  # [L, H]
        out[start:stop] = now[start:stop, None, None] * np.exp(
            centre[start:stop, None, :] + scale[start:stop, None, :] * z[None])
    return out


# ------------------------------------------------------------------------------------------------ run log

RUN_LOG_COLUMNS = ("asof", "symbol", "now_close", "horizon_min", "p_up", "p10_end", "p50_end", "p90_end")


def realised_close(bars: pd.DataFrame, origin: pd.Timestamp, horizon_min: int) -> float:
    """Close known at the end of the window [origin, origin + horizon): the last bar starting in it.

    NaN when no bar of the window exists yet (unresolved) or the window is not over in ``bars``."""
    idx = bars.index
    end = origin + pd.Timedelta(minutes=horizon_min)
    if len(idx) == 0 or idx[-1] < end - pd.Timedelta(minutes=1):
        return math.nan
    lo, hi = idx.searchsorted(origin, side="left"), idx.searchsorted(end, side="left")
    return float(bars["close"].iloc[hi - 1]) if hi > lo else math.nan


def _summary_last_bar(log_dir: Path, name: Any) -> pd.Timestamp | None:
    """The ``last_bar`` of a run's summary JSON next to the run log, when it is still there."""
    if not isinstance(name, str) or not name:
        return None
    path = log_dir / name
    try:
        value = json.loads(path.read_text()).get("last_bar")
    except (OSError, ValueError):
        return None
    return pd.Timestamp(value).tz_convert("UTC") if value else None


def run_log_outcomes(log: pd.DataFrame, bars: pd.DataFrame, log_dir: Path | None = None) -> pd.DataFrame:
    """Adds each run's origin (the start of its first forecast minute) and realised_close.

    The origin is last_bar + 1 min, from a ``last_bar`` column or the run's summary file (``summary_file``,
    relative to ``log_dir``); without either it is asof floored to the minute, which is wrong only when the
    run used delayed data (its last bar then ended well before asof)."""
    log = log.copy()
    origin = pd.to_datetime(log["asof"], utc=True).dt.floor("min")
    if "last_bar" in log.columns:
        last = pd.to_datetime(log["last_bar"], utc=True)
        origin = origin.where(last.isna(), last + pd.Timedelta(minutes=1))
    elif "summary_file" in log.columns and log_dir is not None:
        last = [_summary_last_bar(log_dir, f) for f in log["summary_file"]]
        origin = pd.Series([o if lb is None else lb + pd.Timedelta(minutes=1) for o, lb in zip(origin, last)],
                           index=log.index)
    log["origin"] = pd.to_datetime(origin, utc=True)
    log["realised_close"] = [realised_close(bars, o, int(h)) for o, h in zip(log["origin"], log["horizon_min"])]
    return log


def fit_from_run_log(log_csv: str | Path, bars: pd.DataFrame, symbol: str | None = None,
                     horizon_min: int | None = None, isotonic_min: int = ISOTONIC_MIN_N) -> Calibrator:
    """Fit the calibrator from the forecast CLI's run log once outcomes are in ``bars`` (UTC, bar-start index).

    p_up is calibrated against close(end) > now_close, p_hit_vwap (when logged) against the realised touch of
    the session VWAP by the live rule. The bands learn from the end quantiles p10/p50/p90 (the run log has no
    paths), so only the horizon-end step is fitted; other steps borrow it."""
    log = pd.read_csv(log_csv)
    missing = [c for c in RUN_LOG_COLUMNS if c not in log.columns]
    if missing:
        raise ValueError(f"run log lacks columns {missing}")
    if symbol is not None:
        log = log[log["symbol"] == symbol]
    horizon = int(horizon_min or log["horizon_min"].mode().iloc[0])
    log = run_log_outcomes(log[log["horizon_min"] == horizon], bars, Path(log_csv).parent)
    log = log[np.isfinite(log["realised_close"])].sort_values("origin")
    now = log["now_close"].to_numpy(float)
    y = (log["realised_close"].to_numpy(float) > now).astype(float)
    times = pd.DatetimeIndex(log["origin"])
    p_cal = ProbabilityCalibrator.fit(log["p_up"].to_numpy(float), y, times, isotonic_min)
    m = np.log(log["p50_end"].to_numpy(float) / now)
    s = np.maximum(np.log(log["p90_end"].to_numpy(float) / log["p10_end"].to_numpy(float)) / IQR_TO_SIGMA,
                   SCALE_FLOOR)
    z = (np.log(log["realised_close"].to_numpy(float) / now) - m) / s
    bands = BandCalibrator.fit(z[:, None], steps=[horizon], times=times)
    vwap_cal = ProbabilityCalibrator()
    if "p_hit_vwap" in log.columns:
        modes = log["vwap_mode"] if "vwap_mode" in log.columns else pd.Series("moving", index=log.index)
        hit = [realised_vwap_touch(bars, o, horizon, c, md if isinstance(md, str) and md else "moving")
               for o, c, md in zip(log["origin"], log["now_close"], modes)]
        vwap_cal = ProbabilityCalibrator.fit(pd.to_numeric(log["p_hit_vwap"], errors="coerce").to_numpy(float),
                                             np.array(hit, dtype=float), times, isotonic_min)
    meta = {"source": "run_log", "run_log": str(log_csv), "symbol": symbol,
            "created_utc": datetime.now(timezone.utc).isoformat()}
    return Calibrator(horizon, p_cal, vwap_cal, bands, meta)


def realised_vwap_touch(bars: pd.DataFrame, origin: pd.Timestamp, horizon_min: int, now_close: float,
                        mode: str = "moving", rth: bool = True) -> float:
    """1.0 when the realised bars of [origin, origin + horizon) touched the session VWAP by the live rule
    (market.metrics.p_hit_vwap on the one realised path), 0.0 when not, NaN when unknown."""
    from market import calendar as mcal
    from market.metrics import p_hit_vwap

    session = mcal.session_containing(origin, rth)
    if session is None:
        return math.nan
    start = mcal.session_window(session, rth)[0]
    today = bars[(bars.index >= start) & (bars.index < origin)]
    times = pd.date_range(origin, periods=horizon_min, freq="min")
    window = bars.reindex(times)
    if window["close"].isna().all() or bars.index[-1] < times[-1]:
        return math.nan
    close = window["close"].ffill().fillna(now_close)
    missing = window["close"].isna()
    cols = [np.where(missing, close, window[c]) for c in ("open", "high", "low", "close")]
    path = np.stack(cols + [window["volume"].fillna(0.0).to_numpy(), np.zeros(horizon_min)], axis=-1)
    return p_hit_vwap(path[None], today, now_close, mode)
