"""The report of a walk-forward run: per-forecaster scores, walk-forward calibration, the toy rule, Diebold-Mariano
against the random walk, the per-origin CSV, report.json and the calibrators for the live forecast."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from evaluation import scoring, verdict
from evaluation.edge import edge_rule, run_forecasters
from evaluation.online import calibrated_columns
from evaluation.store import SKIP
from evaluation.walkforward import LEVELS, _nums
from forecast.artifacts import atomic_write_json, atomic_write_text
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


def per_origin_table(evals: dict[str, Evaluation]) -> pd.DataFrame:
    """One spreadsheet row per (origin, forecaster)."""
    rows = []
    for name, ev in evals.items():
        t = ev.f.table
        hz = t["horizon"].to_numpy(int)
        q_end, qc_end = _end(ev.f.q, hz), _end(ev.q_cal, hz)
        d = pd.DataFrame({
            "origin_utc": t["origin"].dt.strftime("%Y-%m-%d %H:%M"),
            "origin_et": t["origin"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d %H:%M"),
            "session": t["session"], "forecaster": name, "horizon_min": hz, "truncated": t["truncated"],
            "now_close": t["now_close"], "p_up": t["p_up"], "p_up_cal": ev.p_cal, "up": t["up"],
            "p_hit_vwap": t["p_hit_vwap"], "p_hit_vwap_cal": ev.vwap_cal, "hit_vwap": t["hit_vwap"],
            "exp_ret": t["exp_ret"], "zscore_mid": t["zscore_mid"], "vwap": t["vwap"],
            "realised_end": _end(ev.f.realised, hz)})
        for j, lv in enumerate(LEVELS):
            d[f"q{round(lv * 100):02d}_end"] = q_end[:, j]
        for band in BANDS[:2]:
            d[f"q{round(band.lo * 100):02d}_cal_end"] = qc_end[:, LEVELS.index(band.lo)]
            d[f"q{round(band.hi * 100):02d}_cal_end"] = qc_end[:, LEVELS.index(band.hi)]
        d["pit_end"], d["crps_end"] = _end(ev.f.pit, hz), _end(ev.f.crps, hz)
        trades = {(tr.get("symbol"), tr["origin"]): tr["ret_bp"] for tr in ev.report["toy_rule"]["raw"]["trades"]}
        syms = t["symbol"] if "symbol" in t.columns else [None] * len(t)
        d["rule_trade_bp"] = [trades.get((s, o.isoformat()), np.nan) for s, o in zip(syms, t["origin"])]
        # online (forecast.online) beside raw and walk-forward; last, so older readers keep their columns
        qo_end = _end(ev.q_online, hz)
        d["p_up_online"], d["p_hit_vwap_online"] = ev.p_online, ev.vwap_online
        d["q10_online_end"], d["q90_online_end"] = qo_end[:, LEVELS.index(0.10)], qo_end[:, LEVELS.index(0.90)]
        if "symbol" in t.columns:
            d.insert(0, "symbol", t["symbol"].to_numpy())
        rows.append(d)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    order = ["origin_utc", "symbol", "forecaster"] if "symbol" in out.columns else ["origin_utc", "forecaster"]
    return out.sort_values(order, kind="stable") if len(out) else out


def fmt(x: Any, width: int, digits: int) -> str:
    """A right-aligned number with `digits` decimals, or "-" for a missing or non-finite one."""
    ok = isinstance(x, (int, float)) and math.isfinite(x)
    return f"{x:>{width}.{digits}f}" if ok else f"{'-':>{width}}"


def _last(xs: Sequence[Any]) -> float:
    return next((x for x in reversed(xs) if x is not None), math.nan)


def console_table(report: dict[str, Any]) -> str:
    """A short fixed-width comparison of the forecasters."""
    head = (f"{'forecaster':<22}{'n':>6}{'Brier':>8}{'cal':>8}{'REL':>8}{'logloss':>9}{'hit':>6}"
            f"{'CRPS bp':>9}{'cov80':>7}{'cal80':>7}{'onl80':>7}{'onl':>8}{'DM crps':>9}{'p':>7}{'trades':>7}"
            f"{'net bp':>8}")
    lines = verdict.lines(report.get("verdict_vs_random_walk") or []) + ["", head, "-" * len(head)]
    for name, r in report["forecasters"].items():
        pu = r["p_up"]
        cov = r["coverage_by_step"]["p10_p90"]
        dm = next((v["crps_end"] for k, v in r.items() if k.startswith("diebold_mariano_vs_")), None)
        rule = r["toy_rule"]["raw"]
        lines.append(
            f"{name[:21]:<22}{pu['raw']['n']:>6}{fmt(pu['raw']['brier'], 8, 4)}{fmt(pu['calibrated']['brier'], 8, 4)}"
            f"{fmt(pu['raw']['reliability'], 8, 4)}{fmt(pu['raw']['log_loss'], 9, 4)}{fmt(pu['raw']['hit_rate'], 6, 2)}"
            f"{fmt(r['close_end']['crps_fair_bp'], 9, 2)}{fmt(_last(cov['raw']), 7, 2)}"
            f"{fmt(_last(cov['calibrated']), 7, 2)}{fmt(_last(cov.get('online', [])), 7, 2)}"
            f"{fmt(pu.get('online', {}).get('brier'), 8, 4)}{fmt(dm and dm['stat'], 9, 2)}{fmt(dm and dm['p_value'], 7, 3)}"
            f"{rule['n_trades']:>7}{fmt(rule['total_bp'], 8, 1)}")
    w = report["independent_windows"]
    lines.append(f"{w['n_origins']} origins in {w['n_sessions']} sessions = {w['n_independent']} independent "
                 f"{report['settings']['horizon']}-minute windows; cal = walk-forward calibrated (after warm-up), "
                 f"onl = online calibrated (forecast.online; Brier and onl80 on the same origins), "
                 f"cov80 = 10-90 band coverage at the last step, DM < 0 = better than the random walk")
    return "\n".join(lines)


def jsonable(x: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def failed_forecasts(records: dict[tuple[str, str], dict]) -> dict[str, Any]:
    """Per forecaster: how many origins gave unusable paths, and the first message."""
    out: dict[str, Any] = {}
    for (name, _), rec in sorted(records.items()):
        if "error" in rec:
            entry = out.setdefault(name, {"n": 0, "first": rec["error"]})
            entry["n"] += 1
    return out


def build_report(records: dict[tuple[str, str], dict], settings: Any, out_dir: Path,
                 data: dict[str, Any] | None = None, baseline: str = "random_walk",
                 plots: bool = True) -> dict[str, Any]:
    """Scores, calibrators, the per-origin CSV, report.json and the PNGs from the stored records."""
    frames = frames_by_forecaster(records, settings.horizon)
    if not frames:
        raise ValueError("no forecast records to report on")
    base = frames.get(baseline)
    evals = {name: evaluate(f, settings, base) for name, f in frames.items()}
    rw = frames.get(verdict.REFERENCE)
    for name, ev in evals.items():  # the verdict needs every model against the random walk, whatever the baseline
        key = "diebold_mariano_vs_" + verdict.REFERENCE
        if rw is not None and name != rw.name and key not in ev.report:
            ev.report[key] = diebold_mariano_vs(ev.f, rw, settings)
    skipped = [r for (n, _), r in records.items() if n == SKIP]
    # Numbers and times vary per origin; without them the reasons group into a few kinds.
    kinds = [re.sub(r"\d[\d:.+TZ-]*", "#", r["reason"])[:100] for r in skipped]
    reasons = pd.Series(kinds, dtype=object).value_counts().to_dict() if skipped else {}
    any_f = next(iter(frames.values()))
    resolved = any_f.table[np.isfinite(any_f.table["up"])]
    sessions = resolved["session"].to_numpy() if "symbol" not in resolved.columns else \
        (resolved["symbol"] + " " + resolved["session"]).to_numpy()  # pooled: windows of each symbol
    report: dict[str, Any] = {
        "verdict_vs_random_walk": verdict.versus_random_walk({n: jsonable(ev.report) for n, ev in evals.items()}),
        "settings": dataclasses.asdict(settings), "data": data or {}, "levels": list(LEVELS),
        "independent_windows": scoring.independent_windows(pd.DatetimeIndex(resolved["origin"]), settings.horizon,
                                                           sessions),
        "overlap_h": math.ceil(settings.horizon / settings.every),
        "first_origin": any_f.table["origin"].min().isoformat(), "last_origin": any_f.table["origin"].max().isoformat(),
        "skipped_origins": {"n": len(skipped), "reasons": reasons},
        "failed_forecasts": failed_forecasts(records),
        "forecasters": {name: ev.report for name, ev in evals.items()},
        "calibrators": {},
    }
    pinned = run_forecasters(out_dir)  # evaluation.edge: what trust.edge and the edge-gated rule need
    verdicts = {v["forecaster"]: v for v in report["verdict_vs_random_walk"]}
    for name, ev in evals.items():
        report["forecasters"][name]["toy_rule"]["edge"] = edge_rule(ev, verdicts.get(name), settings)
        # what trust.edge of a live forecast needs: this backtest's verdict on skill and the settings it ran
        ev.calibrator.meta |= jsonable({"versus_random_walk": verdicts.get(name),
                                        "forecaster_settings": pinned.get(name), "report": str(out_dir / "report.json")})
        path = ev.calibrator.save(out_dir / f"calibrator_{name}.json")
        report["calibrators"][name] = path.name
    atomic_write_text(out_dir / "per_origin.csv", per_origin_table(evals).to_csv(index=False, float_format="%.8g"))
    report = jsonable(report)
    if plots:
        from evaluation.charts import write_plots

        report["plots"] = write_plots(evals, report, out_dir)
    atomic_write_json(out_dir / "report.json", report)
    return report

