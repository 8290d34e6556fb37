"""The plain thing first: how each model compares with the random walk, in one sentence per model.

Upstream evaluations found Kronos over-confident and near chance on short intraday horizons, so whether a model
beats the random walk at all is what a user needs before any other number. The sentence is decided by the two
Diebold-Mariano tests the report already runs (end-of-horizon CRPS and the Brier loss of P(up), overlap-corrected):
a test counts when p < ``ALPHA``. Significantly worse on one and better on none: "the random walk is better";
the reverse: "better than the random walk"; one each way: "mixed"; neither: "not distinguishable".
"""
from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05
REFERENCE = "random_walk"


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def _p(p: float) -> str:
    return "p = n/a" if not math.isfinite(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def _side(stat: float, p: float) -> int:
    """-1: the model is significantly better, +1 significantly worse, 0 neither (DM < 0 = the model's loss lower)."""
    if not (math.isfinite(stat) and math.isfinite(p)) or p >= ALPHA:
        return 0
    return -1 if stat < 0 else 1


def compare(name: str, crps_bp: float, crps_rw_bp: float, dm_crps: dict[str, Any], brier: float, brier_rw: float,
            dm_brier: dict[str, Any]) -> dict[str, Any]:
    """One model against the random walk: the outcome word and the sentence that says it with its numbers."""
    sides = (_side(_f(dm_crps.get("stat")), _f(dm_crps.get("p_value"))),
             _side(_f(dm_brier.get("stat")), _f(dm_brier.get("p_value"))))
    if 1 in sides and -1 not in sides:
        outcome, head = "worse", "the random walk is better"
    elif -1 in sides and 1 not in sides:
        outcome, head = "better", "better than the random walk"
    elif 1 in sides:
        outcome, head = "mixed", "mixed against the random walk"
    else:
        outcome, head = "indistinguishable", "not distinguishable from the random walk"
    detail = (f"CRPS {crps_bp:.1f} vs {crps_rw_bp:.1f} bp, {_p(_f(dm_crps.get('p_value')))}; "
              f"Brier {brier:.4f} vs {brier_rw:.4f}, {_p(_f(dm_brier.get('p_value')))}")
    better = lambda dm: bool(_f(dm.get("stat")) < 0)  # noqa: E731 - DM < 0: the model's loss is lower
    return {"forecaster": name, "outcome": outcome, "crps_better": better(dm_crps), "brier_better": better(dm_brier), "crps_end_bp": crps_bp, "crps_end_bp_random_walk": crps_rw_bp,
            "crps_dm_p": _f(dm_crps.get("p_value")), "brier_p_up": brier, "brier_p_up_random_walk": brier_rw,
            "brier_dm_p": _f(dm_brier.get("p_value")), "sentence": f"{name}: {head} ({detail})"}


def versus_random_walk(forecasters: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model of a report's ``forecasters`` block against the random walk in it (empty without one)."""
    rw = forecasters.get(REFERENCE)
    if rw is None:
        return []
    out = []
    for name, r in forecasters.items():
        dm = r.get("diebold_mariano_vs_" + REFERENCE)
        if name == REFERENCE or dm is None:
            continue
        out.append(compare(name, _f(r["close_end"]["crps_fair_bp"]), _f(rw["close_end"]["crps_fair_bp"]),
                           dm["crps_end"], _f(r["p_up"]["raw"]["brier"]), _f(rw["p_up"]["raw"]["brier"]),
                           dm["brier_p_up"]))
    return out


def lines(verdicts: list[dict[str, Any]]) -> list[str]:
    if not verdicts:
        return ["against the random walk: no random walk in this run, so no verdict on skill"]
    return ["against the random walk (Diebold-Mariano, overlap-corrected):"] + ["  " + v["sentence"] for v in verdicts]
