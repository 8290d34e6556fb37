"""One forecaster's backtest records judged: its arrays (ForecasterFrame), the scores, the calibrated and online
columns, the Diebold-Mariano tests and the toy trading rule (Evaluation). report.py writes them out and charts.py
draws them; both import this module, never each other's internals."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from evaluation import scoring
from evaluation.online import calibrated_columns
from evaluation.store import SKIP
from evaluation.walkforward import LEVELS, _nums
from forecast.calibrator import BandCalibrator, Calibrator, ProbabilityCalibrator, band_score

BANDS = scoring.DEFAULT_BANDS
DIAGRAM_MIN_BIN = 20  # reliability-diagram bins with fewer outcomes are left out of the chart (kept in the JSON)


# ------------------------------------------------------------------------------------------------ report

def _arr(values: Sequence[Any], width: int) -> np.ndarray:
    """Ragged lists (None = NaN) -> [n, width] float array padded with NaN."""
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        if v is not None:
            row = np.array(v, dtype=float)
            out[i, :row.size] = row
    return out


@dataclass
class ForecasterFrame:
    """One forecaster's records as arrays, sorted by origin."""
    name: str
    table: pd.DataFrame  # scalar fields, one row per origin
    centre: np.ndarray  # [O, H]
    scale: np.ndarray
    q: np.ndarray  # [O, L, H]
    realised: np.ndarray  # [O, H]
    low: np.ndarray
    pit: np.ndarray
    crps: np.ndarray


def frames_by_forecaster(records: dict[tuple[str, str], dict], horizon: int) -> dict[str, ForecasterFrame]:
    out = {}
    by_name: dict[str, list[dict]] = {}
    for (name, _), rec in records.items():
        if name != SKIP and "error" not in rec:
            by_name.setdefault(name, []).append(rec)
    for name, recs in by_name.items():
        recs.sort(key=lambda r: r["origin"])
        scalars = ["origin", "session", "horizon", "truncated", "now_close", "p_up", "p_hit_vwap", "exp_ret",
                   "zscore_mid", "vwap", "up", "hit_vwap", "repaired_share"]
        table = pd.DataFrame([{k: r.get(k) for k in scalars} for r in recs])
        if any("symbol" in r for r in recs):  # a pooled many-symbol run
            table.insert(0, "symbol", [r.get("symbol") for r in recs])
        table["origin"] = pd.to_datetime(table["origin"], utc=True)
        for k in scalars[4:]:
            table[k] = pd.to_numeric(table[k], errors="coerce").astype(float)
        q = np.full((len(recs), len(LEVELS), horizon), np.nan)
        for i, r in enumerate(recs):
            row = np.array(r["q"], dtype=float)
            q[i, :, :row.shape[1]] = row
        out[name] = ForecasterFrame(name, table, _arr([r["centre"] for r in recs], horizon),
                                    _arr([r["scale"] for r in recs], horizon), q,
                                    _arr([r["realised"] for r in recs], horizon), _arr([r["low"] for r in recs], horizon),
                                    _arr([r["pit"] for r in recs], horizon), _arr([r["crps"] for r in recs], horizon))
    return out


def _end(a: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Each origin's value at its own last step (a truncated window ends early): [O, ..., H] -> [O, ...]."""
    idx = horizons.astype(int) - 1
    return np.take_along_axis(a, idx.reshape((-1,) + (1,) * (a.ndim - 1)), axis=-1)[..., 0]


def probability_scores(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(p) & np.isfinite(y)
    p, y = p[ok], y[ok]
    return {**scoring.brier_decomposition(p, y), "log_loss": scoring.log_loss(p, y), **scoring.hit_rate(p, y),
            "mean_p": float(p.mean()) if p.size else math.nan, "base_rate": float(y.mean()) if y.size else math.nan,
            "reliability_table": scoring.reliability_table(p, y).to_dict(orient="records")}


def toy_rule(table: pd.DataFrame, p: np.ndarray, low: np.ndarray, realised: np.ndarray,
             settings: Any) -> dict[str, Any]:
    """Long at the origin's close when p >= rule_p_up and zscore_mid <= rule_z; out at the horizon's close or
    at the stop (filled at the stop, or at the bar's open when it gaps through). One position at a time (per
    symbol, in a pooled run). Net return = exit / entry - 1 with slippage on both fills and fees on both sides."""
    if "symbol" in table.columns:
        trades = []
        for sym in dict.fromkeys(table["symbol"]):
            sel = (table["symbol"] == sym).to_numpy()
            part = _rule_trades(table[sel], p[sel], low[sel], realised[sel], settings)
            trades += [{"symbol": sym, **t} for t in part]
        return _rule_stats(sorted(trades, key=lambda t: t["origin"]))
    return _rule_stats(_rule_trades(table, p, low, realised, settings))


def _rule_trades(table: pd.DataFrame, p: np.ndarray, low: np.ndarray, realised: np.ndarray,
                 settings: Any) -> list[dict[str, Any]]:
    slip, fee, stop = settings.slippage_bp / 1e4, settings.fee_bp / 1e4, settings.stop_bp / 1e4
    trades = []
    free_at = pd.Timestamp.min.tz_localize("UTC")
    for i, row in enumerate(table.itertuples()):
        if row.origin < free_at or not (np.isfinite(p[i]) and np.isfinite(row.zscore_mid)) \
                or not np.isfinite(realised[i, 0]):
            continue
        if p[i] < settings.rule_p_up or row.zscore_mid > settings.rule_z:
            continue
        h = int(row.horizon)
        now = row.now_close
        stop_px = now * (1 - stop)
        hit = np.nonzero(low[i, :h] <= stop_px)[0]
        if hit.size:
            t = int(hit[0])
            bar_open = realised[i, t - 1] if t > 0 else now
            exit_px = min(stop_px, bar_open)
        else:
            t, exit_px = h - 1, realised[i, h - 1]
        ret = exit_px * (1 - slip) / (now * (1 + slip)) - 1 - 2 * fee
        exit_time = row.origin + pd.Timedelta(minutes=t + 1)
        trades.append({"origin": row.origin.isoformat(), "exit": exit_time.isoformat(), "stopped": bool(hit.size),
                       "ret_bp": ret * 1e4})
        free_at = exit_time
    return trades


def _rule_stats(trades: list[dict[str, Any]]) -> dict[str, Any]:
    rets = np.array([t["ret_bp"] for t in trades])
    equity = np.cumsum(rets) if rets.size else np.zeros(0)
    peak = np.maximum.accumulate(np.concatenate([[0.0], equity]))[1:] if rets.size else np.zeros(0)
    return {"n_trades": int(rets.size), "win_rate": float((rets > 0).mean()) if rets.size else math.nan,
            "mean_bp": float(rets.mean()) if rets.size else math.nan, "total_bp": float(rets.sum()),
            "t_stat": float(rets.mean() / (rets.std(ddof=1) / math.sqrt(rets.size))) if rets.size > 2 and rets.std() > 0
            else math.nan, "max_drawdown_bp": float((peak - equity).max()) if rets.size else 0.0,
            "stopped": int(sum(t["stopped"] for t in trades)), "trades": trades}


@dataclass
class Evaluation:
    """Derived per-forecaster arrays the report, the CSV and the charts share."""
    f: ForecasterFrame
    p_cal: np.ndarray
    vwap_cal: np.ndarray
    q_cal: np.ndarray  # [O, L, H] walk-forward calibrated quantiles
    p_interval: tuple[np.ndarray, np.ndarray]  # p_up's Monte Carlo interval, walk-forward calibrated
    p_online: np.ndarray  # online recalibrated p_up (forecast.online), and p_hit_vwap, and quantiles [O, L, H]
    vwap_online: np.ndarray
    q_online: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    calibrator: Calibrator | None = None


def evaluate(f: ForecasterFrame, settings: Any, baseline: ForecasterFrame | None) -> Evaluation:
    t = f.table
    H = settings.horizon
    horizons = t["horizon"].to_numpy(int)
    y = t["up"].to_numpy(float)
    p = t["p_up"].to_numpy(float)
    pv, yv = t["p_hit_vwap"].to_numpy(float), t["hit_vwap"].to_numpy(float)
    c = calibrated_columns(f, H, settings.refit_every, settings.isotonic_min, LEVELS, n_paths=settings.n_samples)
    p_cal, p_fits, v_cal, q_cal, q_on, p_on = c.p_cal, c.p_fits, c.v_cal, c.q_cal, c.q_online, c.p_online
    warm = np.isfinite(p_cal)
    rep: dict[str, Any] = {"n_origins": int(len(t)), "n_resolved": int(np.isfinite(y).sum())}
    rep["p_up"] = {"raw": probability_scores(p, y), "raw_after_warmup": probability_scores(p[warm], y[warm]),
                   "calibrated": probability_scores(p_cal[warm], y[warm]),
                   "online": probability_scores(p_on["p_up"][warm], y[warm]), "refits": p_fits}
    vwarm = np.isfinite(v_cal)
    rep["p_hit_vwap"] = {"raw": probability_scores(pv, yv), "raw_after_warmup": probability_scores(pv[vwarm], yv[vwarm]),
                         "calibrated": probability_scores(v_cal[vwarm], yv[vwarm]),
                         "online": probability_scores(p_on["p_hit_vwap"][vwarm], yv[vwarm])}
    end_real = _end(f.realised, horizons)
    q_end = _end(f.q, horizons)  # [O, L]
    crps_end = _end(f.crps, horizons)
    rep["close_end"] = {
        "crps_fair": float(np.nanmean(crps_end)), "crps_fair_bp": float(np.nanmean(crps_end / t["now_close"]) * 1e4),
        "crps_by_step_bp": _nums(np.nanmean(f.crps / t["now_close"].to_numpy()[:, None], axis=0) * 1e4),
        "pinball": {f"{lv:g}": float(np.nanmean(scoring.pinball_loss(q_end[:, j], end_real, lv)))
                    for j, lv in enumerate(LEVELS)},
        "pit_histogram": scoring.pit_histogram(_end(f.pit, horizons)),
    }
    cov: dict[str, Any] = {}
    band_warm = np.isfinite(q_cal).any(axis=(1, 2))
    for band in BANDS:
        i, j = LEVELS.index(band.lo), LEVELS.index(band.hi)
        cov[band.name] = {
            "nominal": band.nominal,
            "raw": _nums(scoring.band_coverage(f.q[:, i], f.q[:, j], f.realised)),
            "raw_after_warmup": _nums(scoring.band_coverage(f.q[band_warm, i], f.q[band_warm, j], f.realised[band_warm])),
            "calibrated": _nums(scoring.band_coverage(q_cal[band_warm, i], q_cal[band_warm, j], f.realised[band_warm])),
            "online": _nums(scoring.band_coverage(q_on[band_warm, i], q_on[band_warm, j], f.realised[band_warm])),
        }
    rep["coverage_by_step"] = cov
    rep["toy_rule"] = {"raw": toy_rule(t, p, f.low, f.realised, settings),
                       "calibrated": toy_rule(t, p_cal, f.low, f.realised, settings)}
    if baseline is not None and baseline.name != f.name:
        rep["diebold_mariano_vs_" + baseline.name] = diebold_mariano_vs(f, baseline, settings)
    return Evaluation(f, p_cal, v_cal, q_cal, c.p_cal_interval, p_on["p_up"], p_on["p_hit_vwap"], q_on, rep,
                      final_calibrator(f, settings))


def diebold_mariano_vs(f: ForecasterFrame, base: ForecasterFrame, settings: Any) -> dict[str, Any]:
    """DM tests on common origins: end-of-horizon CRPS and the Brier loss of p_up (negative = f is better)."""
    keys = ["symbol", "origin"] if "symbol" in f.table.columns else "origin"
    a = f.table.assign(crps_end=_end(f.crps, f.table["horizon"].to_numpy(int))).set_index(keys)
    b = base.table.assign(crps_end=_end(base.crps, base.table["horizon"].to_numpy(int))).set_index(keys)
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    h = math.ceil(settings.horizon / settings.every)  # windows overlap up to h origins apart
    return {"crps_end": scoring.diebold_mariano(a["crps_end"].to_numpy(), b["crps_end"].to_numpy(), h=h),
            "brier_p_up": scoring.diebold_mariano((a["p_up"] - a["up"]).to_numpy() ** 2,
                                                  (b["p_up"] - b["up"]).to_numpy() ** 2, h=h)}


def final_calibrator(f: ForecasterFrame, settings: Any) -> Calibrator:
    """Fitted on every resolved outcome of the run: what the live forecast should apply from now on."""
    t = f.table
    origins = pd.DatetimeIndex(t["origin"])
    scores = band_score(f.realised, t["now_close"].to_numpy(), f.centre, f.scale)
    meta = {"forecaster": f.name, "source": "backtest", "symbol": settings.symbol, "every_min": settings.every,
            "n_paths": settings.n_samples}
    return Calibrator(settings.horizon,
                      ProbabilityCalibrator.fit(t["p_up"].to_numpy(float), t["up"].to_numpy(float), origins,
                                                settings.isotonic_min),
                      ProbabilityCalibrator.fit(t["p_hit_vwap"].to_numpy(float), t["hit_vwap"].to_numpy(float),
                                                origins, settings.isotonic_min),
                      BandCalibrator.fit(scores, pit=f.pit, times=origins), meta)
