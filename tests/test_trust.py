"""trust.status and trust.edge (forecast.trust) against values worked out by hand or with scipy."""
import math

import numpy as np
import pytest
from scipy import stats

from forecast import trust


def _recent(cov: float, p: float, up_rate: float, n: int = 200, n_ind: int = 40) -> trust.Recent:
    inside = (np.arange(n) < round(cov * n)).astype(float)
    up = (np.arange(n) < round(up_rate * n)).astype(float)
    return trust.Recent(inside, np.full(n, p), up, n_ind)


def test_status_by_hand() -> None:
    assert trust.status(None, has_calibration=False)["status"] == "uncalibrated"
    assert trust.status(None, has_calibration=True)["status"] == "stale"
    assert trust.status(_recent(0.8, 0.5, 0.5, n_ind=9), True)["status"] == "stale"  # too few windows to vouch
    # 40 independent windows: coverage tolerance max(0.05, 2 sqrt(0.16 / 40)) = 0.1265
    tol = 2 * math.sqrt(0.8 * 0.2 / 40)
    ok = trust.status(_recent(0.8 - tol + 0.01, 0.55, 0.5), True)
    assert ok["status"] == "calibrated" and ok["coverage_tolerance"] == pytest.approx(tol)
    assert trust.status(_recent(0.8 - tol - 0.01, 0.55, 0.5), True)["status"] == "stale"
    # P(up) tolerance at an up-rate of 0.5 over 40 windows: 2 sqrt(0.25 / 40) = 0.158
    assert trust.status(_recent(0.8, 0.5 + 0.15, 0.5), True)["status"] == "calibrated"
    bad = trust.status(_recent(0.8, 0.5 + 0.17, 0.5), True)
    assert bad["status"] == "stale" and "P(up)" in bad["reason"]
    # with many windows the floor of 0.05 rules
    assert trust.status(_recent(0.8, 0.56, 0.5, n_ind=5000), True)["status"] == "stale"
    assert trust.status(_recent(0.8, 0.54, 0.5, n_ind=5000), True)["status"] == "calibrated"


def test_calibrated_interval_maps_the_jeffreys_ends() -> None:
    k, n = 62, 100
    lo, hi = stats.beta.ppf([0.025, 0.975], k + 0.5, n - k + 0.5)
    f = lambda p: 1 / (1 + math.exp(-(0.5 * math.log(p / (1 - p)) + 0.1)))  # noqa: E731
    assert trust.calibrated_interval(k, n, []) == pytest.approx((lo, hi))
    assert trust.calibrated_interval(k, n, [f]) == pytest.approx((f(lo), f(hi)))
    assert trust.calibrated_interval(k, n, [lambda p: 1 - p]) == pytest.approx((1 - hi, 1 - lo))


def _meta(crps_p: float, better: bool, **settings) -> dict:
    return {"source": "backtest", "forecaster_settings": {"kind": "kronos", "model": "m", "top_p": 0.9, **settings},
            "versus_random_walk": {"crps_dm_p": crps_p, "crps_better": better, "brier_dm_p": 0.5,
                                   "brier_better": False, "sentence": "k: ..."}}


def test_edge_needs_a_matching_backtest_with_skill_and_an_interval_off_half() -> None:
    live = {"model": "m", "top_p": 0.9}
    assert trust.backtest_skill(None, live)[0] is None
    assert trust.backtest_skill({"source": "run_log"}, live)[0] is None
    assert trust.backtest_skill(_meta(0.01, True, top_p=1.0), live)[0] is None  # other settings: unknown
    assert trust.backtest_skill(_meta(0.01, True), live)[0] is True
    assert trust.backtest_skill(_meta(0.01, False), live)[0] is False  # significant, but the random walk won
    assert trust.backtest_skill(_meta(0.2, True), live)[0] is False
    assert trust.edge((0.52, 0.7), True, "")["edge"] is True
    assert trust.edge((0.45, 0.7), True, "")["edge"] is False
    assert trust.edge((0.2, 0.3), True, "")["edge"] is True  # a confident "down" is an edge too
    assert trust.edge((0.52, 0.7), None, "none")["edge"] is None
    assert trust.edge((0.52, 0.7), False, "no")["edge"] is False
