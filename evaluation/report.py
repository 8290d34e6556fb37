"""The report of a walk-forward run: per-forecaster scores, walk-forward calibration, the toy rule, Diebold-Mariano
against the random walk, the per-origin CSV, report.json and the calibrators for the live forecast."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from evaluation import scoring, verdict
from evaluation.edge import edge_rule, run_forecasters
from evaluation.evaluate import (BANDS, Evaluation, _end, diebold_mariano_vs, evaluate, frames_by_forecaster)
from evaluation.store import SKIP
from evaluation.walkforward import LEVELS
from forecast.artifacts import atomic_write_json, atomic_write_text


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

