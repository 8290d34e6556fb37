"""The symbols of a backtest run as jobs, and running them: in this process, one symbol after another, or sharded
on Ray (``ray_runner``). Either way each symbol's folder holds the same records and run.json, so a run started
in one mode resumes in the other; this module is the one place that chooses.
"""
from __future__ import annotations

import logging
import time
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Sequence

from evaluation.store import PARTS, RESULTS, RUN_FILE, ResultStore, read_run_file
from evaluation.universe import SymbolJob
from forecast.owned import Layout, Owner, claim

log = logging.getLogger(__name__)
Records = dict[tuple[str, str], dict[str, Any]]
PART_NAMES = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].*.jsonl"  # a shard's records: <session>.<group>.jsonl
# What a backtest writes in one symbol's folder (and, for a finetune run, in OUT/ab): the results store, the
# report, the calibrators and the charts.
RUN_LAYOUT: Layout = {
    RESULTS: None, RUN_FILE: None, PARTS: {PART_NAMES: None}, "report.json": None, "per_origin.csv": None,
    "calibrator_*.json": None, "reliability.png": None, "pit_histogram.png": None, "coverage_by_step.png": None,
    "equity.png": None, ".*.png.tmp.png": None,
}
SYMBOL_FOLDERS = "[A-Z0-9]*"  # --symbols: one folder per (upper-case) symbol


def _earlier_backtest(folder: Path) -> bool:
    """A run.json of ours (here, or in a symbol's folder of a --symbols run): settings, data and forecasters."""
    import json

    for path in [folder / RUN_FILE, *folder.glob(f"{SYMBOL_FOLDERS}/{RUN_FILE}")]:
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(run, dict) and {"settings", "data", "forecasters"} <= set(run):
            return True
    return False


BACKTEST = Owner("backtest.py", {**RUN_LAYOUT, SYMBOL_FOLDERS: RUN_LAYOUT}, _earlier_backtest)


def clear_results(folder: Path) -> None:
    """--fresh: forget a folder's earlier results and run record (only our own files: the folder was claimed)."""
    for name in (RESULTS, RUN_FILE):
        (folder / name).unlink(missing_ok=True)
    parts = folder / PARTS
    if parts.is_dir():
        for path in parts.iterdir():
            if path.is_file() and fnmatchcase(path.name, PART_NAMES):
                path.unlink()
        if not any(parts.iterdir()):
            parts.rmdir()


def run_jobs(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
             progress: bool = True, fresh: bool = False,
             root: Path | None = None) -> tuple[dict[str, Records], dict[str, Any]]:
    """Every job's walk-forward (its folder made, and emptied first when ``fresh``), on Ray when ``cfg.ray``;
    returns each symbol's stored records and how the run was executed (report.json's "execution"). ``root``, when
    given, is the run's --out, claimed for backtest.py just before the first folder is made."""
    if cfg.ray:
        return _run_on_cluster(jobs, cfg, names, specs, progress, fresh, root)
    _make_folders(jobs, fresh, root)
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


def _make_folders(jobs: Sequence[SymbolJob], fresh: bool, root: Path | None) -> None:
    """Each job's folder; with ``fresh`` emptied of earlier results, else every store read first, so that a
    damaged one (any symbol's) is refused before any symbol runs."""
    if not fresh:
        for job in jobs:
            ResultStore(job.out_dir / RESULTS).load()
            if (job.out_dir / RUN_FILE).exists():
                read_run_file(job.out_dir / RUN_FILE)
    if root is not None:
        claim(root, BACKTEST)  # only our own files are ever replaced or deleted in --out (exit 2 otherwise)
    for job in jobs:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            clear_results(job.out_dir)


def _run_on_cluster(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
                    progress: bool, fresh: bool, root: Path | None) -> tuple[dict[str, Records], dict[str, Any]]:
    """Join (or start) the cluster before any folder is made or emptied: one that cannot be reached leaves
    everything as it was; then the shards, and the cluster ended when this run started or joined it."""
    from evaluation import ray_runner

    joined = ray_runner.connect(cfg.ray_address)
    try:
        _make_folders(jobs, fresh, root)
        execution = {"mode": "ray", **_run_sharded(jobs, cfg, names, specs, progress)}
    finally:
        if joined:
            ray_runner.import_ray().shutdown()
    return {job.symbol: ResultStore(job.out_dir / RESULTS).load() for job in jobs}, execution


def _run_sharded(jobs: Sequence[SymbolJob], cfg: Any, names: Sequence[str], specs: Sequence[dict[str, Any]],
                 progress: bool) -> dict[str, Any]:
    """Pin each symbol's run.json, then run every unfinished shard on the connected Ray cluster."""
    from forecast.settings import fingerprint
    from evaluation import ray_runner
    from evaluation.forecasters import describe_forecasters, kronos_configs
    from evaluation.store import check_run_file

    described = describe_forecasters(cfg, names, specs)
    for job in jobs:
        check_run_file(job.out_dir, fingerprint(job.cfg), job.data, described)
    return ray_runner.run_on_ray(jobs, names, specs, [n for n, _ in kronos_configs(cfg, specs)], progress=progress)
