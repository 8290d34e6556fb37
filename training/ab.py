"""The A/B: the walk-forward backtest (evaluation/) of the vanilla and the fine-tuned checkpoint side by side, with
the baselines, on the held-out test sessions only, and the verdict by the documented rule.

Decision rule (README, "Fine-tuning"): adopt the fine-tuned checkpoint only if, on the test sessions,
  1. its mean end-of-horizon CRPS is lower than the vanilla model's,
  2. the Diebold-Mariano test of that CRPS difference (overlap-corrected, evaluation.scoring) has p < 0.05, and
  3. its Brier score of P(up) is not worse than the vanilla model's.
"""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from forecast.artifacts import atomic_write_json

log = logging.getLogger("finetune")
DM_ALPHA = 0.05
VANILLA, FINETUNED = "vanilla", "finetuned"
RULE = (f"adopt the fine-tuned checkpoint only if its end-of-horizon CRPS on the held-out test sessions is lower "
        f"than the vanilla model's with a Diebold-Mariano p-value below {DM_ALPHA}, and its Brier score of P(up) "
        f"is not worse")


def backtest_settings(cfg: Any, test_sessions: list[str]) -> Any:
    """The backtest's settings: the fine-tuning run's forecast keys, origins in the test sessions only."""
    from evaluation.settings import BACKTEST_KEYS, BacktestConfig
    from forecast.settings import KEYS

    # every value comes from a checked key (the forecast's, or fine-tuning's ab_* with the backtest's own rules)
    values = {k.name: getattr(cfg, k.name) for k in KEYS} | {k.name: k.default for k in BACKTEST_KEYS}
    values.update(start=test_sessions[0], end=test_sessions[-1], every=cfg.ab_every,
                  forecasters=list(cfg.ab_baselines), seed=0 if cfg.seed is None else cfg.seed, calibrator=None)
    return BacktestConfig(**values)


def run_ab(cfg: Any, frame: pd.DataFrame, test_sessions: list[str], best: Path, best_tokenizer: Path | None,
           out: Path, data: dict[str, Any], progress: bool = True, plots: bool = True) -> dict[str, Any]:
    """Backtest both checkpoints on the test sessions; write OUT/ab/ (report.json, per_origin.csv, ab.json)."""
    from forecast.settings import fingerprint
    from evaluation.forecasters import build_forecasters
    from evaluation.report import build_report, jsonable
    from evaluation.walkforward import run_walk_forward
    from forecast.pipeline import ForecastPipeline

    bcfg = backtest_settings(cfg, test_sessions)
    tuned = {"name": FINETUNED, "model": str(best), "model_revision": None}
    if best_tokenizer is not None:
        tuned |= {"tokenizer": str(best_tokenizer), "tokenizer_revision": None}
    forecasters = build_forecasters(bcfg, bcfg.forecasters, [{"name": VANILLA}, tuned])
    identity = data_identity(frame, data, test_sessions)
    start_over_if_changed(out, fingerprint(bcfg), identity, forecasters)
    records = run_walk_forward(frame, ForecastPipeline(bcfg, calibrator=None), forecasters, out, identity,
                               progress=progress)
    report = build_report(records, bcfg, out, data, baseline=VANILLA, plots=plots)
    # the plain thing first: each checkpoint against the random walk, before the rule's vanilla-vs-tuned verdict
    result = {"versus_random_walk": report.get("verdict_vs_random_walk") or [], "rule": RULE, "test_sessions": test_sessions, "every": bcfg.every, "baselines": list(cfg.ab_baselines),
              **verdict(report), "table": comparison(report)}
    atomic_write_json(out / "ab.json", jsonable(result))
    return result


def data_identity(frame: pd.DataFrame, provenance: dict[str, Any], test_sessions: list[str]) -> dict[str, Any]:
    """What OUT/ab/run.json pins of the data: where the bars came from, a digest of them and the test sessions;
    never the clock (an Alpaca run's "asof" is now) nor counts of the whole loaded range, so the same bars give
    the same identity on every re-run."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()
    return {**{k: provenance[k] for k in ("source", "file", "feed", "delayed") if k in provenance},
            "bars_sha256": digest, "test_sessions": list(test_sessions)}


def start_over_if_changed(out: Path, settings: dict[str, Any], identity: dict[str, Any],
                          forecasters: list[Any]) -> None:
    """OUT/ab is derived from the kept model: when it holds an A/B of other settings, baselines or bars, that A/B
    is deleted and this one runs from the start; an identical one (an interrupted run) resumes."""
    from evaluation.store import RUN_FILE, RunMismatch, check_run_file

    if not (out / RUN_FILE).is_file():
        return
    try:
        check_run_file(out, settings, identity, forecasters)
    except RunMismatch:
        log.warning("%s holds an A/B of other settings or bars (another --ab-every, --ab-baselines or data): "
                    "it starts over", out)
        shutil.rmtree(out)


def _get(d: dict, *keys: str) -> float:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return math.nan
        d = d[k]
    return math.nan if d is None else float(d)


def comparison(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per forecaster: CRPS, Brier, band coverage at the horizon's end, Diebold-Mariano vs vanilla."""
    rows = []
    for name, r in report["forecasters"].items():
        cov = r.get("coverage_by_step", {})
        rows.append({
            "forecaster": name, "n_origins": r.get("n_origins"),
            "crps_end": _get(r, "close_end", "crps_fair"), "crps_end_bp": _get(r, "close_end", "crps_fair_bp"),
            "brier_p_up": _get(r, "p_up", "raw", "brier"),
            **{f"coverage_{band}": (cov[band]["raw"][-1] if band in cov and cov[band]["raw"] else None)
               for band in ("p05_p95", "p10_p90", "p25_p75")},
            "dm_crps_stat": _get(r, "diebold_mariano_vs_vanilla", "crps_end", "stat"),
            "dm_crps_p": _get(r, "diebold_mariano_vs_vanilla", "crps_end", "p_value"),
            "dm_brier_stat": _get(r, "diebold_mariano_vs_vanilla", "brier_p_up", "stat"),
            "dm_brier_p": _get(r, "diebold_mariano_vs_vanilla", "brier_p_up", "p_value"),
        })
    return rows


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    f = report["forecasters"]
    if VANILLA not in f or FINETUNED not in f:
        return {"adopt": False, "reason": "the backtest has no scored forecast of both checkpoints"}
    van, ft = f[VANILLA], f[FINETUNED]
    crps_v, crps_f = _get(van, "close_end", "crps_fair"), _get(ft, "close_end", "crps_fair")
    brier_v, brier_f = _get(van, "p_up", "raw", "brier"), _get(ft, "p_up", "raw", "brier")
    dm = ft.get("diebold_mariano_vs_vanilla", {}).get("crps_end", {})
    p, stat = _get(dm, "p_value"), _get(dm, "stat")
    checks = {"crps_lower": crps_f < crps_v, "dm_significant": p < DM_ALPHA and stat < 0,
              "brier_not_worse": brier_f <= brier_v}
    adopt = all(checks.values())
    failed = [k for k, ok in checks.items() if not ok]
    reason = ("all three conditions hold" if adopt else "not adopted: " + ", ".join(failed) + " failed")
    return {"adopt": adopt, "reason": reason, "checks": checks, "crps_end": {VANILLA: crps_v, FINETUNED: crps_f},
            "brier_p_up": {VANILLA: brier_v, FINETUNED: brier_f}, "dm_crps_end": dm}


def console_table(result: dict[str, Any]) -> str:
    from evaluation.report import fmt
    from evaluation.verdict import lines as verdict_lines

    head = f"{'forecaster':<16}{'n':>5}{'CRPS bp':>9}{'Brier':>8}{'cov80':>7}{'cov90':>7}{'DM stat':>9}{'DM p':>8}"
    lines = verdict_lines(result.get("versus_random_walk") or []) + ["", head, "-" * len(head)]
    for r in result["table"]:
        lines.append(f"{r['forecaster']:<16}{r['n_origins'] or 0:>5}{fmt(r['crps_end_bp'], 9, 2)}"
                     f"{fmt(r['brier_p_up'], 8, 4)}{fmt(r['coverage_p10_p90'], 7, 2)}"
                     f"{fmt(r['coverage_p05_p95'], 7, 2)}{fmt(r['dm_crps_stat'], 9, 2)}{fmt(r['dm_crps_p'], 8, 3)}")
    lines.append(f"verdict: {'ADOPT' if result['adopt'] else 'keep the vanilla model'} ({result['reason']})")
    return "\n".join(lines)
