"""Monte Carlo error of the path estimates (forecast/mc_error.py and where it is reported).

A simulated engine of known law: log closes follow a Gaussian random walk with drift mu and volatility sigma per
minute, so P(up at H), every quantile of the close at minute h and the mean return at H have closed forms. Over
2,000 replications of N paths each, the 95 % intervals must cover those truths 93-97 % of the time, and shrink as
1/sqrt(N) (width at N over width at 4N near 2). Everything is vectorised over the replications.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forecast import mc_error
from forecast.metrics import compute_metrics

REPS, H, MU, SIGMA, NOW = 2000, 10, 2e-4, 1e-3, 500.0


def engine(reps: int, n: int, seed: int) -> np.ndarray:
    """Closes [reps, n, H] of the simulated engine (each replication: n paths from the same context)."""
    rng = np.random.default_rng(seed)
    return NOW * np.exp(np.cumsum(MU + SIGMA * rng.standard_normal((reps, n, H)), axis=2))


def true_p_up() -> float:
    return float(stats.norm.cdf(MU * H / (SIGMA * math.sqrt(H))))


def true_close_quantile(level: float, minute: int) -> float:
    return NOW * math.exp(MU * minute + SIGMA * math.sqrt(minute) * stats.norm.ppf(level))


def true_mean_return() -> float:
    return math.exp(MU * H + SIGMA**2 * H / 2) - 1.0


def p_up_intervals(closes: np.ndarray) -> np.ndarray:
    n = closes.shape[1]
    return np.array([mc_error.proportion_interval(int(k), n) for k in (closes[:, :, -1] > NOW).sum(axis=1)])


def test_probability_interval_covers_the_truth_and_shrinks():
    p = true_p_up()
    assert 0.6 < p < 0.8  # not the symmetric case
    ci = p_up_intervals(engine(REPS, 100, seed=1))
    coverage = np.mean((ci[:, 0] <= p) & (p <= ci[:, 1]))
    assert 0.93 <= coverage <= 0.97, coverage
    # the same coverage by a second method: the exact binomial sum over every count k
    exact = sum(stats.binom.pmf(k, 100, p) for k in range(101)
                if mc_error.proportion_interval(k, 100)[0] <= p <= mc_error.proportion_interval(k, 100)[1])
    assert 0.93 <= exact <= 0.97 and abs(coverage - exact) < 0.015
    wide = p_up_intervals(engine(REPS // 4, 400, seed=2))
    ratio = np.mean(ci[:, 1] - ci[:, 0]) / np.mean(wide[:, 1] - wide[:, 0])
    assert 1.8 < ratio < 2.2, ratio


def test_interval_at_the_edges_is_not_a_point():
    lo, hi = mc_error.proportion_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(stats.beta.ppf(0.975, 0.5, 50.5))
    lo, hi = mc_error.proportion_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(stats.beta.ppf(0.025, 50.5, 0.5))
    with pytest.raises(ValueError):
        mc_error.proportion_interval(3, 2)


@pytest.mark.parametrize("minute", [1, H])
def test_quantile_interval_covers_the_truth_and_shrinks(minute):
    levels = (0.1, 0.5, 0.9)
    closes = engine(REPS, 100, seed=3)[:, :, minute - 1]     # [reps, N]
    lo, hi = mc_error.quantile_intervals(closes.T, levels)  # [L, reps]
    truth = np.array([true_close_quantile(q, minute) for q in levels])[:, None]
    coverage = np.mean((lo <= truth) & (truth <= hi), axis=1)
    assert ((0.93 <= coverage) & (coverage <= 0.97)).all(), coverage
    lo4, hi4 = mc_error.quantile_intervals(engine(REPS // 4, 400, seed=4)[:, :, minute - 1].T, levels)
    ratio = np.mean(hi - lo, axis=1) / np.mean(hi4 - lo4, axis=1)
    assert ((1.8 < ratio) & (ratio < 2.2)).all(), ratio
    # one replication through the scalar function: the same pair
    assert mc_error.quantile_interval(closes[7], 0.1) == (lo[0, 7], hi[0, 7])


def test_quantile_interval_ranks_by_brute_force():
    """The ranks bound the true quantile with probability >= 95 %, and no narrower symmetric choice does."""
    for n, level in ((20, 0.5), (100, 0.1), (250, 0.95)):
        r, s = mc_error.order_statistic_ranks(n, level)
        cover = lambda a, b: stats.binom.cdf(b - 1, n, level) - stats.binom.cdf(a - 1, n, level)  # noqa: E731
        assert cover(r, s) >= 0.95
        assert stats.binom.cdf(r - 1, n, level) <= 0.025 < stats.binom.cdf(r, n, level)  # r is the largest such
        assert 1 - stats.binom.cdf(s - 1, n, level) <= 0.025 < 1 - stats.binom.cdf(s - 2, n, level)
    lo, hi = mc_error.quantile_interval(np.arange(5.0), 0.01)  # 5 draws cannot bound the 1 % quantile from below
    assert lo == -math.inf and hi == 1.0  # X(2): P(B <= 1) = 0.999 for B ~ Binomial(5, 0.01)


def test_mean_standard_error_covers_the_truth_and_shrinks():
    final = engine(REPS, 100, seed=5)[:, :, -1] / NOW - 1.0
    se = np.array([mc_error.mean_standard_error(row) for row in final])
    np.testing.assert_allclose(se, final.std(axis=1, ddof=1) / 10.0)
    coverage = np.mean(np.abs(final.mean(axis=1) - true_mean_return()) <= 1.96 * se)
    assert 0.93 <= coverage <= 0.97, coverage
    final4 = engine(REPS // 4, 400, seed=6)[:, :, -1] / NOW - 1.0
    ratio = se.mean() / np.mean([mc_error.mean_standard_error(row) for row in final4])
    assert 1.8 < ratio < 2.2, ratio
    assert math.isnan(mc_error.mean_standard_error(np.array([1.0])))


def history(n: int = 90) -> pd.DataFrame:
    idx = pd.date_range("2025-06-02 13:30", periods=n, freq="1min", tz="UTC")
    close = NOW + np.sin(np.arange(n) / 5.0)
    return pd.DataFrame({"open": close, "high": close + 0.2, "low": close - 0.2, "close": close,
                         "volume": 1e5}, index=idx)


def as_paths(closes: np.ndarray) -> np.ndarray:
    """[N, H] closes -> [N, H, 6] bars (wicks 0.05 % beyond open/close)."""
    open_ = np.concatenate([np.full((closes.shape[0], 1), NOW), closes[:, :-1]], axis=1)
    high, low = np.maximum(open_, closes) * 1.0005, np.minimum(open_, closes) * 0.9995
    return np.stack([open_, high, low, closes, np.full_like(closes, 1e5), closes * 1e5], axis=-1)


def test_compute_metrics_reports_every_interval():
    closes = engine(1, 200, seed=7)[0]
    m = compute_metrics(as_paths(closes), history(), NOW).to_dict()
    k = int((closes[:, -1] > NOW).sum())
    assert m[f"p_up_{H}m_ci"] == pytest.approx([stats.beta.ppf(0.025, k + 0.5, 200 - k + 0.5),
                                                 stats.beta.ppf(0.975, k + 0.5, 200 - k + 0.5)])
    final = closes[:, -1] / NOW - 1
    assert m[f"exp_ret_{H}m_se"] == pytest.approx(final.std(ddof=1) / math.sqrt(200))
    for key in ("p_hit_vwap", "p_hit_mid", "p_vol_exceeds_recent"):
        p, (lo, hi) = m[f"{key}_{H}m"], m[f"{key}_{H}m_ci"]
        assert (lo, hi) == mc_error.proportion_interval(round(p * 200), 200) and lo <= p <= hi
    for q in ("p10", "p50", "p90"):
        per_minute = m["percentiles_ci"][q]
        assert len(per_minute) == H
        for h in range(H):
            assert list(mc_error.quantile_interval(closes[:, h], int(q[1:]) / 100)) == per_minute[h]
            assert per_minute[h][0] <= m["percentiles"][q][h] <= per_minute[h][1]
        lo, hi = m[f"ret_percentiles_{H}m_ci"][q]
        assert lo <= m[f"ret_percentiles_{H}m"][q] <= hi
    for name in ("drawdown", "runup"):
        for q in (50, 90, 95):
            lo, hi = m[f"{name}_p{q}_{H}m_ci"]
            assert lo <= m[f"{name}_p{q}_{H}m"] <= hi


def test_calibrated_interval_maps_the_endpoints():
    from forecast.calibrator import ProbabilityCalibrator
    from forecast.pipeline import mapped_interval

    for a, b in ((1.7, 0.2), (-0.8, 0.1)):  # increasing and decreasing Platt maps
        cal = ProbabilityCalibrator("platt", {"a": a, "b": b}, 100)
        by_hand = [1 / (1 + math.exp(-(a * math.log(p / (1 - p)) + b))) for p in (0.4, 0.6)]
        assert mapped_interval(cal.apply, [0.4, 0.6]) == pytest.approx(sorted(by_hand))
    iso = ProbabilityCalibrator("isotonic", {"x": [0.0, 0.5, 1.0], "y": [0.1, 0.3, 0.9]}, 100)
    assert mapped_interval(iso.apply, [0.25, 0.75]) == pytest.approx([0.2, 0.6])
    assert mapped_interval(iso.apply, None) is None


def test_bands_csv_is_spreadsheet_ready():
    import datetime as dt
    import io
    from zoneinfo import ZoneInfo

    from forecast.bands import bands_csv_text

    closes = engine(1, 30, seed=8)[0]  # 30 paths: the p10 band's lower bound cannot be given (empty cell)
    m = compute_metrics(as_paths(closes), history(), NOW, percentiles=(1, 50, 90)).to_dict()
    times = [f"2025-01-02T15:{i:02d}:00Z" for i in range(H)]  # winter: New York is UTC-5
    summary = {"future_times": times, "summary": m, "calibrated": {"percentiles": {"p50": list(range(H))}}}
    text = bands_csv_text(summary)
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == ["minute_ahead", "time_utc", "time_new_york", "p1", "p1_lo", "p1_hi", "p50",
                                   "p50_lo", "p50_hi", "p90", "p90_lo", "p90_hi", "p50_cal"]
    assert frame["minute_ahead"].tolist() == list(range(1, H + 1)) and frame["time_utc"].tolist() == times
    for utc, ny in zip(times, frame["time_new_york"]):
        expected = dt.datetime.fromisoformat(utc.replace("Z", "+00:00")).astimezone(ZoneInfo("America/New_York"))
        assert ny == expected.isoformat() and ny.endswith("-05:00")
    numbers = frame.drop(columns=["time_utc", "time_new_york"])
    assert all(np.issubdtype(t, np.number) for t in numbers.dtypes)  # numbers, never text
    assert frame["p1_lo"].isna().all()  # 30 draws cannot bound the 1 % quantile from below: an empty cell
    np.testing.assert_allclose(frame["p50"], m["percentiles"]["p50"])
    assert (frame["p50_lo"] <= frame["p50"]).all() and (frame["p50"] <= frame["p50_hi"]).all()
    assert "e-" not in text and "e+" not in text and "None" not in text and "nan" not in text
