"""Walk-forward backtest: every origin, every forecaster, the stored record of each forecast.

Origins every ``every`` minutes inside each session's regular hours (the first one ``every`` minutes after the
open). Each origin is a replay of the live run at that instant through the forecast pipeline (``replay``), every
forecaster gets the same prepared history, and each forecast is scored against its realised outcome
(``outcome``). A record keeps what the report needs instead of the paths: the live metrics, per-step median and
scale of the log-return ensemble, quantiles at ``LEVELS``, PIT and fair CRPS per step, and the outcome.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from evaluation import scoring
from evaluation.forecasters import check_forecaster_names, rng_for, sample_cases
from evaluation.replay import Case, make_origins, prepare_case
from evaluation.store import RESULTS, SKIP, ResultStore, check_run_file
from forecast.calibrator import ensemble_centre_scale
from forecast.errors import ModelError
from forecast.pipeline import ForecastPipeline, check_paths
from forecast.metrics import repair_paths

LEVELS = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)


def _num(x: Any) -> float | None:
    x = float(x)
    return float(f"{x:.9g}") if math.isfinite(x) else None


def _nums(a: np.ndarray) -> list:
    return [_num(v) for v in np.asarray(a, dtype=float).ravel()] if np.ndim(a) <= 1 else [_nums(r) for r in a]


def score_case(name: str, case: Case, paths: np.ndarray, pipeline: ForecastPipeline) -> dict[str, Any]:
    """The stored record of one forecaster at one origin; ValueError or ModelError for unusable paths."""
    cfg = pipeline.cfg
    h = len(case.times)
    paths = np.asarray(paths, dtype=float)
    if paths.shape[:2] != (cfg.n_samples, h) or paths.shape[2] != 6:
        raise ValueError(f"{name} returned paths of shape {paths.shape}, expected ({cfg.n_samples}, {h}, 6)")
    repaired, info = repair_paths(check_paths(paths))
    m = pipeline.metrics(case.context, repaired, info, percentiles=[50])
    closes = repaired[:, :, 3]
    centre, scale = ensemble_centre_scale(closes, case.now_close)
    rec: dict[str, Any] = {
        "forecaster": name, "origin": case.key, "session": case.session, "horizon": h,
        "truncated": bool(case.truncated), "now_close": case.now_close,
        "p_up": m.p_up, "p_hit_vwap": m.p_hit_vwap, "exp_ret": m.exp_ret,
        "zscore_mid": m.zscore_mid, "vwap": m.vwap, "repaired_share": _num(info["share"]),
        "centre": _nums(centre), "scale": _nums(scale), "q": _nums(np.quantile(closes, LEVELS, axis=0)),
        "realised": None, "low": None, "pit": None, "crps": None, "up": None, "hit_vwap": None,
    }
    out = case.outcome
    if out is not None:
        y = out.close
        rng = rng_for(cfg.seed + 1, name, case.origin)
        hit = math.nan if out.hit_vwap is None else out.hit_vwap
        rec |= {"realised": _nums(y), "low": _nums(out.bars["low"].to_numpy(float)),
                "pit": _nums(scoring.pit_values(closes.T, y, rng)), "crps": _nums(scoring.crps_fair(y, closes.T)),
                "up": out.up, "hit_vwap": _num(hit) if rec["p_hit_vwap"] is not None else None}
    for k in ("p_up", "p_hit_vwap", "exp_ret", "zscore_mid", "vwap", "now_close"):
        rec[k] = None if rec[k] is None else _num(rec[k])
    return rec


def scored_or_failed(name: str, case: Case, paths: np.ndarray, pipeline: ForecastPipeline) -> dict[str, Any]:
    """The record, or a failure record when the paths are unusable (NaN, a price <= 0, wrong shape): one bad
    forecast must not stop a night's run, and it is counted in the report instead of silently dropped."""
    try:
        return score_case(name, case, paths, pipeline)
    except (ValueError, ModelError) as exc:
        return {"forecaster": name, "origin": case.key, "session": case.session, "error": str(exc)[:300]}


def run_walk_forward(frame: pd.DataFrame, pipeline: ForecastPipeline, forecasters: Sequence[Any], out_dir: Path,
                     data: dict[str, Any] | None = None, progress: bool = True) -> dict[tuple[str, str], dict]:
    """Forecast every origin with every forecaster, appending finished batches; returns all stored records.
    ``pipeline`` prepares every origin (its config is the run's settings)."""
    from forecast.settings import fingerprint

    cfg = pipeline.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    check_forecaster_names([f.name for f in forecasters])
    store = ResultStore(out_dir / RESULTS)
    done = set(store.load())  # a damaged store is refused before run.json is written
    check_run_file(out_dir, fingerprint(cfg), data or {}, forecasters)
    origins = make_origins(frame, cfg)
    from tqdm import tqdm

    # One unit per origin and forecaster: a baseline moves the bar origin by origin, a Kronos engine call as its
    # decode steps complete each origin's share, so the rate (and tqdm's time left) is steady from the start.
    names = [f.name for f in forecasters]
    bar = tqdm(total=len(origins) * len(names), initial=forecasts_done(origins, names, done),
               desc=f"origins x {len(names)} forecaster(s)", unit="forecast", file=sys.stderr,
               disable=not progress)
    try:
        for start in range(0, len(origins), cfg.batch):
            batch = origins[start:start + cfg.batch]
            for records in batch_records(frame, batch, pipeline, forecasters, done, tick=bar.update):
                store.append(records)  # one write per forecaster and batch: all of it or (after a crash) none
                done |= {(r["forecaster"], r["origin"]) for r in records}
            bar.set_postfix_str(f"at {batch[-1].tz_convert('America/New_York'):%Y-%m-%d %H:%M} ET", refresh=False)
    finally:
        bar.close()
    return store.load()


def forecasts_done(origins: Sequence[pd.Timestamp], names: Sequence[str], done: set | dict) -> int:
    """(origin, forecaster) pairs already stored, a skipped origin counting for every forecaster (a resumed
    run's bar starts there)."""
    keys = [t.isoformat() for t in origins]
    return sum(len(names) if (SKIP, k) in done else sum((n, k) in done for n in names) for k in keys)


def origins_done(keys: Sequence[str], names: Sequence[str], done: set | dict) -> bool:
    """Every origin either skipped or forecast by every forecaster named."""
    return all((SKIP, k) in done or all((n, k) in done for n in names) for k in keys)


def batch_records(frame: pd.DataFrame, batch: Sequence[pd.Timestamp], pipeline: ForecastPipeline,
                  forecasters: Sequence[Any], done: set | dict,
                  tick: Callable[[int], Any] | None = None) -> Iterator[list[dict[str, Any]]]:
    """The records of one batch of origins that ``done`` lacks: first the skip records, then one list per
    forecaster, each computed only when asked for (a caller stores each before the next is made). Every entry
    point of the walk-forward (one process, a Ray shard) runs this same code. ``tick(k)``: k more (origin,
    forecaster) pairs are done (a skipped origin counts for every forecaster)."""
    cfg = pipeline.cfg
    names = [f.name for f in forecasters]
    if origins_done([t.isoformat() for t in batch], names, done):
        return
    cases = [prepare_case(frame, t, pipeline) for t in batch]
    skipped = [{"forecaster": SKIP, "origin": c.key, "session": c.session, "reason": c.skip}
               for c in cases if c.skip and (SKIP, c.key) not in done]
    if skipped:
        if tick is not None:
            tick(len(skipped) * len(names))
        yield skipped
    live = [c for c in cases if not c.skip]
    for f in forecasters:
        todo = [c for c in live if (f.name, c.key) not in done]
        if todo:
            yield [scored_or_failed(f.name, c, p, pipeline)
                   for c, p in zip(todo, sample_cases(f, todo, cfg, on_origins=tick))]
