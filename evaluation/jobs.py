"""The symbols of a backtest run as jobs, and running them: in this process, one symbol after another, or sharded
on Ray (``ray_runner``). Either way each symbol's folder holds the same records and run.json, so a run started
in one mode resumes in the other; this module is the one place that chooses.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from evaluation.store import PARTS, RESULTS, RUN_FILE, ResultStore, read_run_file

log = logging.getLogger(__name__)
Records = dict[tuple[str, str], dict[str, Any]]


@dataclass
class SymbolJob:
    """One symbol of the run: its bars, its results folder, its settings (symbol set) and what identifies its
    bars for a resume (run.json's "data")."""
    symbol: str
    frame: pd.DataFrame
    out_dir: Path
    cfg: Any
    data: dict[str, Any] = field(default_factory=dict)


def clear_results(folder: Path) -> None:
    """--fresh: forget a folder's earlier results and run record."""
    for name in (RESULTS, RUN_FILE):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / PARTS, ignore_errors=True)


def run_jobs(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
             progress: bool = True, fresh: bool = False) -> tuple[dict[str, Records], dict[str, Any]]:
    """Every job's walk-forward (its folder made, and emptied first when ``fresh``), on Ray when ``cfg.ray``;
    returns each symbol's stored records and how the run was executed (report.json's "execution")."""
    if cfg.ray:
        return _run_on_cluster(jobs, cfg, names, specs, progress, fresh)
    _make_folders(jobs, fresh)
    t0 = time.perf_counter()
    from evaluation.forecasters import build_forecasters
    from evaluation.walkforward import run_walk_forward
    from forecast.pipeline import ForecastPipeline

    forecasters = build_forecasters(cfg, names, specs)
    by_symbol = {}
    for job in jobs:
        log.info("%s: %d bars; forecasters %s; results in %s", job.symbol, len(job.frame),
                 [f.name for f in forecasters], job.out_dir)
        by_symbol[job.symbol] = run_walk_forward(job.frame, ForecastPipeline(job.cfg, calibrator=None), forecasters,
                                                 job.out_dir, job.data, progress=progress)
    return by_symbol, {"mode": "one process", "seconds": round(time.perf_counter() - t0, 3)}


def _make_folders(jobs: Sequence[SymbolJob], fresh: bool) -> None:
    """Each job's folder; with ``fresh`` emptied of earlier results, else every store read first, so that a
    damaged one (any symbol's) is refused before any symbol runs."""
    if not fresh:
        for job in jobs:
            ResultStore(job.out_dir / RESULTS).load()
            if (job.out_dir / RUN_FILE).exists():
                read_run_file(job.out_dir / RUN_FILE)
    for job in jobs:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            clear_results(job.out_dir)


def _run_on_cluster(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
                    progress: bool, fresh: bool) -> tuple[dict[str, Records], dict[str, Any]]:
    """Join (or start) the cluster before any folder is made or emptied: one that cannot be reached leaves
    everything as it was; then the shards, and the cluster ended when this run started or joined it."""
    from evaluation import ray_runner

    joined = ray_runner.connect(cfg.ray_address)
    try:
        _make_folders(jobs, fresh)
        execution = {"mode": "ray", **_run_sharded(jobs, cfg, names, specs, progress)}
    finally:
        if joined:
            ray_runner.import_ray().shutdown()
    return {job.symbol: ResultStore(job.out_dir / RESULTS).load() for job in jobs}, execution


def _run_sharded(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
                 progress: bool) -> dict[str, Any]:
    """Pin each symbol's run.json, then run every unfinished shard on the connected Ray cluster."""
    from app.config import fingerprint
    from evaluation import ray_runner
    from evaluation.forecasters import describe_forecasters, kronos_configs
    from evaluation.store import check_run_file

    described = describe_forecasters(cfg, names, specs)
    for job in jobs:
        check_run_file(job.out_dir, fingerprint(job.cfg), job.data, described)
    return ray_runner.run_on_ray(jobs, names, specs, [n for n, _ in kronos_configs(cfg, specs)], progress=progress)
