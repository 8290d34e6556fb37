"""What trust.edge (forecast.trust) needs from a backtest, and the toy rule gated on it.

A live forecast has an edge only when a backtest of its model and settings found skill against the random walk; the
backtest records its verdict and the settings run.json pinned in each calibrator it writes. The same gate applied
inside the backtest gives the edge-gated toy rule.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.store import RUN_FILE


def edge_rule(ev: Any, verdict_entry: dict[str, Any] | None, settings: Any) -> dict[str, Any]:
    """The toy rule on the calibrated p_up, trading only where trust.edge would hold: the model beat the random walk
    in this backtest (DM p < 0.05 on CRPS or Brier; in-sample, so the kindest case) and the calibrated p_up
    interval excludes 0.5. The random walk itself and a model without skill never trade."""
    from evaluation.evaluate import toy_rule
    from forecast.trust import backtest_skill

    skill, _ = backtest_skill({"source": "backtest", "versus_random_walk": verdict_entry,
                               "forecaster_settings": {"kind": "kronos"}}, {})
    lo, hi = ev.p_interval
    gate = bool(skill) & ((lo > 0.5) | (hi < 0.5))
    p = np.where(gate, ev.p_cal, np.nan)
    out = toy_rule(ev.f.table, p, ev.f.low, ev.f.realised, settings)
    return {**out, "skill": bool(skill), "n_origins_with_edge": int(np.sum(gate))}


def run_forecasters(out_dir: Path) -> dict[str, Any]:
    """The forecaster settings run.json pinned (empty without one)."""
    try:
        return json.loads((Path(out_dir) / RUN_FILE).read_text()).get("forecasters") or {}
    except (OSError, ValueError):
        return {}
