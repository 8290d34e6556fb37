"""Scoring functions against hand computations and independent libraries."""
import math

import numpy as np
import pandas as pd
import pytest
import scoringrules as sr
from scipy import stats
from sklearn.metrics import brier_score_loss, log_loss as sk_log_loss

from evaluation import scoring


def test_brier_decomposition_by_hand() -> None:
    # Bins (10 equal): 0.05 -> bin 0, 0.15 x2 -> bin 1, 0.95 -> bin 9; base rate 0.5.
    p = np.array([0.05, 0.15, 0.15, 0.95])
    y = np.array([0, 1, 0, 1])
    d = scoring.brier_decomposition(p, y)
    assert d["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 4)  # 0.1875
    assert d["reliability"] == pytest.approx((0.05**2 + 2 * 0.35**2 + 0.05**2) / 4)  # 0.0625
    assert d["resolution"] == pytest.approx((0.25 + 0 + 0.25) / 4)  # 0.125
    assert d["uncertainty"] == pytest.approx(0.25)
    assert d["within_bin"] == pytest.approx(0.0, abs=1e-12)
    assert d["brier"] == pytest.approx(brier_score_loss(y, p))


def test_brier_parts_add_up_on_random_data() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p).astype(float)
    d = scoring.brier_decomposition(p, y)
    assert d["brier"] == pytest.approx(d["reliability"] - d["resolution"] + d["uncertainty"] + d["within_bin"])
    assert d["reliability"] < 0.005  # calibrated by construction
    assert abs(d["within_bin"]) < 0.01


def test_nan_outcomes_are_not_scored() -> None:
    assert scoring.brier_score(np.array([0.2, 0.9]), np.array([0.0, np.nan])) == pytest.approx(0.04)


def test_log_loss_hand_and_sklearn() -> None:
    p, y = np.array([0.8, 0.3, 0.6]), np.array([1, 0, 0])
    hand = -(math.log(0.8) + math.log(0.7) + math.log(0.4)) / 3
    assert scoring.log_loss(p, y) == pytest.approx(hand)
    assert scoring.log_loss(p, y) == pytest.approx(sk_log_loss(y, p))
    # Clipping keeps a certain-but-wrong forecast finite.
    assert scoring.log_loss(np.array([1.0]), np.array([0])) == pytest.approx(-math.log(scoring.LOG_LOSS_EPS))


def test_hit_rate_ignores_coin_flips() -> None:
    h = scoring.hit_rate(np.array([0.7, 0.2, 0.5, 0.9]), np.array([1, 1, 0, 1]))
    assert h == {"hit_rate": pytest.approx(2 / 3), "n_called": 3, "n": 4}


def test_reliability_table() -> None:
    t = scoring.reliability_table(np.array([0.05, 0.15, 0.15, 0.95]), np.array([0, 1, 0, 1]))
    assert list(t["n"]) == [1, 2, 1]
    assert list(t["obs_freq"]) == [0.0, 0.5, 1.0]
    assert t["mean_p"].tolist() == pytest.approx([0.05, 0.15, 0.95])
    assert (t["obs_lo"] <= t["obs_freq"]).all() and (t["obs_freq"] <= t["obs_hi"]).all()


def test_fair_crps_by_hand() -> None:
    x = np.array([1.0, 2.0, 4.0])
    # E|X - 2.5| = 7/6; sum_ij |xi - xj| = 12; 12 / (2 * 3 * 2) = 1.
    assert float(scoring.crps_fair(2.5, x)) == pytest.approx(1 / 6)


def test_fair_crps_numpy_formula_and_normal_limit() -> None:
    rng = np.random.default_rng(2)
    ens = rng.normal(size=(50, 20))
    obs = rng.normal(size=50)
    m = ens.shape[1]
    hand = np.abs(ens - obs[:, None]).mean(1) - np.abs(ens[:, :, None] - ens[:, None, :]).sum((1, 2)) / (2 * m * (m - 1))
    np.testing.assert_allclose(scoring.crps_fair(obs, ens), hand, rtol=1e-10)
    # The fair score is unbiased for the CRPS of the generating distribution, whatever the ensemble size.
    big = rng.normal(size=(20000, 5))
    y = rng.normal(size=20000)
    assert scoring.crps_fair(y, big).mean() == pytest.approx(float(np.mean(sr.crps_normal(y, 0.0, 1.0))), rel=0.02)


def test_pinball_loss_by_hand() -> None:
    assert scoring.pinball_loss(1.0, 3.0, 0.9) == pytest.approx(1.8)
    assert scoring.pinball_loss(1.0, 0.0, 0.9) == pytest.approx(0.1)
    assert scoring.pinball_loss(2.0, 2.0, 0.3) == 0.0


def test_band_coverage_per_step() -> None:
    lo = np.array([[0.0, 0.0], [0.0, 1.0]])
    hi = np.array([[1.0, 1.0], [1.0, 2.0]])
    obs = np.array([[0.5, 1.5], [1.0, np.nan]])
    np.testing.assert_allclose(scoring.band_coverage(lo, hi, obs), [1.0, 0.0])


def test_pit_values_hand_and_uniformity() -> None:
    rng = np.random.default_rng(3)
    pit = scoring.pit_values(np.array([[1.0, 2.0, 3.0]]), np.array([2.5]), rng)
    assert 0.5 <= pit[0] <= 0.75  # (2 + U) / 4
    # Ties are randomised: all members equal to the outcome spreads PIT over (0, 1).
    tied = scoring.pit_values(np.ones((4000, 9)), np.ones(4000), rng)
    assert stats.kstest(tied, "uniform").pvalue > 1e-3
    ens = rng.normal(size=(4000, 19))
    obs = rng.normal(size=4000)
    assert stats.kstest(scoring.pit_values(ens, obs, rng), "uniform").pvalue > 1e-3
    h = scoring.pit_histogram(scoring.pit_values(ens, obs, rng))
    assert sum(h["counts"]) == 4000 and h["chi2_p_value"] > 1e-3


def test_diebold_mariano_hand_computation() -> None:
    a = np.array([2.0, 1.0, 3.0, 1.0, 4.0])
    b = np.array([1.0, 2.0, 1.0, 1.0, 1.0])
    # d = [1, -1, 2, 0, 3], mean 1, e = [0, -2, 1, -1, 2]; gamma0 = 10/5 = 2; gamma1 = (0 - 2 - 1 - 2)/5 = -1.
    # Bartlett lag 1 weight 1/2: lrv = 2 + 2 * 0.5 * (-1) = 1; var(mean) = 1/5.
    # HLN factor sqrt((5 + 1 - 4 + 2/5) / 5) = sqrt(0.48).
    stat = 1.0 / math.sqrt(0.2) * math.sqrt(0.48)
    d = scoring.diebold_mariano(a, b, h=2)
    assert d["lags"] == 1 and d["mean_diff"] == pytest.approx(1.0)
    assert d["stat"] == pytest.approx(stat)
    assert d["p_value"] == pytest.approx(2 * stats.t.sf(stat, df=4))


def test_diebold_mariano_h1_is_a_paired_t_test() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=200) ** 2, rng.normal(size=200) ** 2
    d = scoring.diebold_mariano(a, b, h=1)
    # With h = 1: DM = mean / sqrt(pop. var / n) = t * sqrt(n / (n - 1)), and the HLN factor is
    # sqrt((n - 1) / n), so the statistic is exactly the paired t statistic with the same t(n - 1) p-value.
    t = stats.ttest_rel(a, b)
    assert d["stat"] == pytest.approx(t.statistic, rel=1e-9)
    assert d["p_value"] == pytest.approx(t.pvalue, rel=1e-6)


def test_independent_windows() -> None:
    day1 = pd.date_range("2025-05-01 14:00", "2025-05-01 15:00", freq="10min", tz="UTC")
    day2 = pd.date_range("2025-05-02 14:00", "2025-05-02 15:00", freq="10min", tz="UTC")
    w = scoring.independent_windows(day1.append(day2), 30)
    # Per day: 14:00, 14:30, 15:00 do not overlap.
    assert w == {"n_origins": 14, "n_sessions": 2, "n_independent": 6}
