"""Fitting the calibrators that forecast.calibrator defines and applies.

Walk-forward
    An outcome of an origin t with horizon H resolves at t + H; a forecast at origin u may use it only when
    t + H <= u. The walk-forward functions refit every ``refit_every`` newly resolved outcomes.

Run log
    Each logged run is replayed through the forecast pipeline and scored by evaluation.outcome, the backtest's
    own outcome rule.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.calibrator import (IQR_TO_SIGMA, ISOTONIC_MIN_N, MIN_FIT_N, SCALE_FLOOR, BandCalibrator, Calibrator,
                                 ProbabilityCalibrator, _iso, band_score, ensemble_centre_scale)

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
                             min_n: int = MIN_FIT_N, also: tuple[np.ndarray, ...] = ()
                             ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Calibrated p for each origin from outcomes resolved before it (NaN until ``min_n`` are known).

    ``origins`` must be sorted. Returns (calibrated p, one record per refit). Each array in ``also`` (e.g. the
    ends of p's Monte Carlo interval) is mapped in place by the same calibrator as p at each origin."""
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
        for a in also:
            a[start:stop] = cal.apply(a[start:stop])
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
    fits = walk_forward_band_fits(origins, centre, scale, now_close, outcome, horizon_min, refit_every, min_n)
    return bands_from_fits(fits, centre, scale, now_close, levels)


def bands_from_fits(fits: list[tuple[int, int, BandCalibrator]], centre: np.ndarray, scale: np.ndarray,
                    now_close: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Calibrated quantiles [O, L, H] from the refits of ``walk_forward_band_fits`` (NaN before the first)."""
    levels = np.asarray(levels, dtype=float)
    now = np.asarray(now_close, dtype=float)
    out = np.full((len(now), levels.size, centre.shape[-1]), np.nan)
    for start, stop, cal in fits:
        z = np.stack([cal.score_quantile(h, levels) for h in range(1, centre.shape[-1] + 1)], axis=-1)  # [L, H]
        out[start:stop] = now[start:stop, None, None] * np.exp(
            centre[start:stop, None, :] + scale[start:stop, None, :] * z[None])
    return out


def walk_forward_band_fits(origins: pd.DatetimeIndex, centre: np.ndarray, scale: np.ndarray, now_close: np.ndarray,
                           outcome: np.ndarray, horizon_min: int, refit_every: int = 50,
                           min_n: int = MIN_FIT_N) -> list[tuple[int, int, BandCalibrator]]:
    """(first origin, stop, band calibrator) of each walk-forward refit: the origins [start, stop) use it."""
    origins = pd.DatetimeIndex(origins)
    scores = band_score(outcome, np.asarray(now_close, dtype=float), centre, scale)
    usable = np.isfinite(scores).all(axis=1)
    plan = _fit_schedule(origins, origins + pd.Timedelta(minutes=horizon_min), usable, refit_every, min_n)
    return [(start, plan[j + 1][0] if j + 1 < len(plan) else len(origins), BandCalibrator.fit(scores[idx]))
            for j, (start, idx) in enumerate(plan)]


# ------------------------------------------------------------------------------------------------ run log

def run_log_outcomes(log: pd.DataFrame, bars: pd.DataFrame, pipeline: Any) -> pd.DataFrame:
    """Each logged run replayed through the pipeline at the instant its data ended (``last_bar`` + 1 minute, so
    delayed-feed runs score the right window), scored by the backtest's own outcome rule. Adds the columns
    origin, realised_close, up and hit_vwap (NaN while unresolved or when the context cannot be rebuilt)."""
    from evaluation.outcome import realised_outcome
    from forecast.errors import Skipped

    cfg = pipeline.cfg
    log = log.copy()
    asof = pd.to_datetime(log["asof"], utc=True)
    if "last_bar" in log.columns:
        last = pd.to_datetime(log["last_bar"], utc=True)
        data_asof = asof.where(last.isna(), last + pd.Timedelta(minutes=1))
    else:
        data_asof = asof.dt.floor("min")
    origin, close, up, hit = [], [], [], []
    for now, cut, h in zip(asof, data_asof, log["horizon_min"]):
        try:
            ctx = pipeline.prepare(bars[bars.index < cut], now, data_asof=cut)
        except Skipped:
            ctx = None
        out = None
        if ctx is not None and len(ctx.times) == int(h):
            out = realised_outcome(bars, ctx.bars, ctx.times, vwap_mode=cfg.vwap_mode, mid_window=cfg.mid_window,
                                   mid_kind=cfg.mid_kind, new_session=ctx.plan.next_session)
        origin.append(ctx.first_minute if ctx is not None else cut)
        close.append(out.close[-1] if out is not None else math.nan)
        up.append(out.up if out is not None else math.nan)
        hit.append(out.hit_vwap if out is not None and out.hit_vwap is not None else math.nan)
    log["origin"] = pd.to_datetime(pd.Series(origin, index=log.index), utc=True)
    log["realised_close"], log["up"], log["hit_vwap"] = close, up, hit
    return log


def fit_from_run_log(log_csv: str | Path, bars: pd.DataFrame, pipeline: Any, symbol: str | None = None,
                     horizon_min: int | None = None, isotonic_min: int = ISOTONIC_MIN_N) -> Calibrator:
    """Fit the calibrator from the forecast CLI's run log once outcomes are in ``bars`` (UTC, bar-start index).

    p_up is calibrated against close(end) > now_close, p_hit_vwap (when logged) against the realised touch of
    the session VWAP, both from ``run_log_outcomes``. The bands learn from the end quantiles p10/p50/p90 (the run
    log has no paths), so only the horizon-end step is fitted; other steps borrow it."""
    from forecast.runlog import read_run_log

    log = read_run_log(log_csv)
    if symbol is not None:
        log = log[log["symbol"] == symbol]
    if log.empty:
        raise ValueError(f"run log {log_csv} holds no runs of {symbol}")
    horizon = int(horizon_min or log["horizon_min"].mode().iloc[0])
    log = run_log_outcomes(log[log["horizon_min"] == horizon], bars, pipeline)
    log = log[np.isfinite(log["realised_close"])].sort_values("origin")
    now = log["now_close"].to_numpy(float)
    times = pd.DatetimeIndex(log["origin"])
    p_cal = ProbabilityCalibrator.fit(log["p_up"].to_numpy(float), log["up"].to_numpy(float), times, isotonic_min)
    m = np.log(log["p50_end"].to_numpy(float) / now)
    s = np.maximum(np.log(log["p90_end"].to_numpy(float) / log["p10_end"].to_numpy(float)) / IQR_TO_SIGMA,
                   SCALE_FLOOR)
    z = band_score(log["realised_close"].to_numpy(float), now, m, s)
    bands = BandCalibrator.fit(z[:, None], steps=[horizon], times=times)
    vwap_cal = ProbabilityCalibrator()
    if "p_hit_vwap" in log.columns:
        vwap_cal = ProbabilityCalibrator.fit(pd.to_numeric(log["p_hit_vwap"], errors="coerce").to_numpy(float),
                                             log["hit_vwap"].to_numpy(float), times, isotonic_min)
    meta = {"source": "run_log", "run_log": str(log_csv), "symbol": symbol,
            "created_utc": datetime.now(timezone.utc).isoformat()}
    return Calibrator(horizon, p_cal, vwap_cal, bands, meta)
