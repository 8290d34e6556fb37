"""Whether a forecast's calibrated numbers can be trusted now, and whether they show an edge.

trust.status
    ``uncalibrated``: neither a walk-forward calibrator nor an online state that has seen outcomes; the numbers
    are the model's own. ``calibrated``: the recent resolved outcomes (at least ``MIN_INDEPENDENT`` independent
    windows) agree with the published calibrated numbers: the 10-90 band's coverage is within
    max(0.05, 2 SE) of nominal and the mean stated P(up) within max(0.05, 2 SE) of the realised up-rate, SE the
    binomial standard error over the independent windows. ``stale``: calibration exists but the recent outcomes
    contradict it or are too few to vouch for it.

trust.edge
    True only when the calibrated P(up) interval excludes 0.5 AND a backtest of this model and settings found skill
    against the random walk (Diebold-Mariano p < 0.05 on CRPS or Brier, the model better); False when either
    fails; None (unknown) when no backtest of this model and settings is known. The backtest is the one the
    calibrator was fitted from (evaluation.report records its verdict and the forecaster's settings in the
    calibrator's meta). The P(up) interval is the Jeffreys interval of k up-paths of N (forecast.mc_error) with
    both endpoints mapped through the calibrator's monotone maps (walk-forward, then online).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from forecast.mc_error import map_interval, proportion_interval

MIN_INDEPENDENT = 10
TOLERANCE_FLOOR = 0.05
SKILL_ALPHA = 0.05


@dataclass(frozen=True)
class Recent:
    """Recent resolved outcomes of published forecasts: inside the published 10-90 band at the horizon's end
    (0/1), the published calibrated P(up), the realised up (0/1), and how many independent windows they span."""
    inside: np.ndarray
    p_up: np.ndarray
    up: np.ndarray
    n_independent: int
    nominal: float = 0.8


def _tolerance(rate: float, n: int) -> float:
    return max(TOLERANCE_FLOOR, 2.0 * math.sqrt(max(rate * (1.0 - rate), 0.0) / max(n, 1)))


def status(recent: Recent | None, has_calibration: bool) -> dict[str, Any]:
    """The trust status and the numbers it was decided on."""
    if not has_calibration:
        return {"status": "uncalibrated", "reason": "no calibrator and no online calibration yet: raw model numbers"}
    n_ind = 0 if recent is None else int(recent.n_independent)
    out: dict[str, Any] = {"n_recent": 0 if recent is None else int(np.isfinite(recent.up).sum()),
                           "n_independent": n_ind}
    if recent is None or n_ind < MIN_INDEPENDENT:
        return {"status": "stale", "reason": f"only {n_ind} independent resolved windows recently "
                                             f"(needs {MIN_INDEPENDENT}) to check the calibration", **out}
    ok_b = np.isfinite(recent.inside)
    ok_p = np.isfinite(recent.p_up) & np.isfinite(recent.up)
    cov = float(np.mean(recent.inside[ok_b])) if ok_b.any() else math.nan
    err = float(np.mean(recent.p_up[ok_p]) - np.mean(recent.up[ok_p])) if ok_p.any() else math.nan
    cov_tol = _tolerance(recent.nominal, n_ind)
    err_tol = _tolerance(float(np.mean(recent.up[ok_p])) if ok_p.any() else 0.5, n_ind)
    fin = lambda x: x if math.isfinite(x) else None  # noqa: E731 - JSON has no NaN
    out |= {"coverage": fin(cov), "nominal": recent.nominal, "coverage_tolerance": cov_tol,
            "calibration_error": fin(err), "calibration_tolerance": err_tol}
    bad = []
    if not abs(cov - recent.nominal) <= cov_tol:
        bad.append(f"band coverage {cov:.2f} against {recent.nominal:.2f}")
    if not abs(err) <= err_tol:
        bad.append(f"P(up) off by {err:+.2f}")
    if bad:
        return {"status": "stale", "reason": "recent outcomes disagree: " + "; ".join(bad), **out}
    return {"status": "calibrated", "reason": f"recent outcomes agree ({n_ind} independent windows)", **out}


def calibrated_interval(k: int, n: int, maps: list[Callable[[float], float]]) -> tuple[float, float]:
    """The Jeffreys interval of k of n mapped through each monotone map in turn (a decreasing one swaps ends)."""
    return map_interval(proportion_interval(k, n), maps)


def backtest_skill(meta: dict[str, Any] | None, settings: dict[str, Any]) -> tuple[bool | None, str]:
    """(skill against the random walk, why) from a calibrator's meta; None when it records no backtest of these
    model settings (``settings``: the live run's values of the keys the backtest pinned)."""
    meta = meta or {}
    verdict, pinned = meta.get("versus_random_walk"), meta.get("forecaster_settings")
    if meta.get("source") != "backtest" or verdict is None or not pinned:
        return None, "no backtest of this model and settings is known (the calibrator records none)"
    differ = [k for k, v in pinned.items() if k != "kind" and k in settings and settings[k] != v]
    if pinned.get("kind") != "kronos" or differ:
        return None, "the calibrator's backtest ran other model settings" + (f" ({', '.join(differ)})" if differ else "")
    better = [name for name, p, ok in (("CRPS", verdict.get("crps_dm_p"), verdict.get("crps_better")),
                                       ("Brier", verdict.get("brier_dm_p"), verdict.get("brier_better")))
              if ok and p is not None and p < SKILL_ALPHA]
    if better:
        return True, f"the backtest found skill against the random walk ({', '.join(better)}, DM p < {SKILL_ALPHA})"
    return False, f"the backtest found no skill against the random walk: {verdict.get('sentence', '')}"


def edge(interval: tuple[float, float], skill: bool | None, skill_reason: str) -> dict[str, Any]:
    excludes = interval[0] > 0.5 or interval[1] < 0.5
    if skill is None:
        value, reason = None, skill_reason
    elif not skill:
        value, reason = False, skill_reason
    else:
        value = bool(excludes)
        reason = skill_reason + ("; the calibrated P(up) interval excludes 0.5" if excludes
                                 else "; but the calibrated P(up) interval contains 0.5")
    return {"edge": value, "edge_reason": reason, "p_up_interval_calibrated": [interval[0], interval[1]],
            "interval_excludes_half": bool(excludes)}


def trust_block(*, calibrator: Any, online: Any, recent: Recent | None, p_up: float, n_paths: int,
                settings: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``trust`` block for one forecast. ``calibrator`` is the walk-forward one applied to it (None
    when none applies), ``online`` the online state (None when off)."""
    has_online = online is not None and online.platt("p_up").n > 0
    out = status(recent, calibrator is not None or has_online)
    maps: list[Callable[[float], float]] = []
    if calibrator is not None:
        maps.append(lambda p: float(calibrator.apply_p_up(p)))
    if online is not None:
        maps.append(lambda p: float(online.prob("p_up", p)))
    k = int(round(p_up * n_paths))
    skill, why = backtest_skill(getattr(calibrator, "meta", None), settings)
    return {**out, **edge(calibrated_interval(k, n_paths, maps), skill, why)}


def console_line(trust: dict[str, Any] | None) -> str | None:
    if not trust:
        return None
    e = {True: "yes", False: "no", None: "unknown"}[trust.get("edge")]
    lo, hi = trust.get("p_up_interval_calibrated") or (math.nan, math.nan)
    return (f"  trust            {trust['status']} ({trust['reason']}); edge {e}, calibrated P(up) 95 % "
            f"{lo:.1%}-{hi:.1%}")
