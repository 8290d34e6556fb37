"""Online calibration (forecast.online, evaluation.online): the ACI long-run bound of Gibbs & Candes on adversarial
outcome sequences, online Platt against scikit-learn's logistic regression, state that survives a restart, and
band coverage on a backtest of a forecaster whose bands are far too narrow."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from evaluation.online import replay_online
from evaluation.scoring import independent_windows
from forecast.online import OnlineCalibrator, OnlinePlatt, logit, score_quantile


def _run_aci(gamma: float, tau: float, w1: float, choose_below, T: int) -> tuple[float, np.ndarray]:
    """T one-step ACI updates at one level; the adversary sees the issued quantile and picks the outcome."""
    cal = OnlineCalibrator(1, (tau,), gamma, w=np.array([[w1]]))
    below = np.zeros(T)
    for t in range(T):
        q = cal.band_quantiles(np.zeros(1), np.ones(1), 1.0)[0, 0]  # price quantile issued now
        want = choose_below(t, cal.w[0, 0])
        # An outcome below (at or under) or above the issued quantile; an infinite quantile leaves no choice.
        y = q * 0.99 if np.isfinite(q) and q > 0 else (2.0 if q == 0 else 0.5)
        if not want and np.isfinite(q) and q > 0:
            y = q * 1.01
        below[t] = y <= q
        cal.update_band(1, np.array([q]), y)
    return cal.w[0, 0], below


@pytest.mark.parametrize("gamma,tau,w1", [(0.02, 0.1, 0.1), (0.05, 0.9, 0.3), (0.01, 0.5, 0.95)])
def test_aci_long_run_bound_holds_on_adversarial_sequences(gamma: float, tau: float, w1: float) -> None:
    rng = np.random.default_rng(1)
    adversaries = {
        "always below": lambda t, w: True,
        "always above": lambda t, w: False,
        "against the tracker": lambda t, w: w > tau,  # pushes w the way it is already off
        "blocks of 37": lambda t, w: (t // 37) % 2 == 0,
        "coin": lambda t, w: bool(rng.uniform() < 0.7),
    }
    for T in (50, 400, 3000):
        bound = (max(w1, 1 - w1) + gamma) / (gamma * T)  # Gibbs & Candes (2021), Proposition 4.1
        for name, adv in adversaries.items():
            w_end, below = _run_aci(gamma, tau, w1, adv, T)
            assert abs(below.mean() - tau) <= bound + 1e-12, (name, T)
            assert -gamma - 1e-12 <= w_end <= 1 + gamma + 1e-12, name


def test_score_quantile_is_normal_without_a_table_and_infinite_outside_0_1() -> None:
    w = np.array([[-0.1, 0.0, 0.1, 0.5, 0.9, 1.0, 1.2]])
    z = score_quantile(w)
    assert np.isneginf(z[0, :2]).all() and np.isposinf(z[0, 5:]).all()
    np.testing.assert_allclose(z[0, 2:5], stats.norm.ppf([0.1, 0.5, 0.9]), atol=1e-9)
    grid = np.linspace(0.005, 0.995, 199)
    table = np.tile(stats.t.ppf(grid, df=3), (1, 1))
    np.testing.assert_allclose(score_quantile(w, grid, table)[0, 2:5], stats.t.ppf([0.1, 0.5, 0.9], df=3), atol=2e-3)


def test_online_platt_converges_to_the_logistic_regression_fit() -> None:
    """Many passes of online Newton steps over one data set reach the maximum-likelihood Platt map, which
    scikit-learn's LogisticRegression finds by batch optimisation."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 1500)
    y = (rng.uniform(size=p.size) < 1 / (1 + np.exp(-(1.7 * logit(p) - 0.3)))).astype(float)
    lr = LogisticRegression(C=1e8, max_iter=1000).fit(logit(p)[:, None], y)
    o = OnlinePlatt()
    for _ in range(20):
        for pi, yi in zip(p, y):
            o.update(pi, yi)
    np.testing.assert_allclose(o.theta, [lr.coef_[0, 0], lr.intercept_[0]], atol=0.01)
    np.testing.assert_allclose(o.predict(p), lr.predict_proba(logit(p)[:, None])[:, 1], atol=0.005)


def test_online_platt_starts_as_the_identity_and_follows_a_drift() -> None:
    o = OnlinePlatt()
    p = np.array([0.1, 0.4, 0.7])
    np.testing.assert_allclose(o.predict(p), p, atol=1e-3)  # warm start: the walk-forward value unchanged
    # Outcomes that come true far less often than stated: one day of them pulls the map down.
    rng = np.random.default_rng(3)
    ps = rng.uniform(0.55, 0.95, 400)
    ys = (rng.uniform(size=ps.size) < 0.3).astype(float)
    for pi, yi in zip(ps, ys):
        o.update(pi, yi)
    assert ps.mean() > 0.7 and abs(o.predict(ps).mean() - ys.mean()) < 0.1


def test_state_survives_a_restart(tmp_path: Path) -> None:
    cal = OnlineCalibrator(3, (0.1, 0.9), 0.05)
    cal.update_band(2, np.array([100.0, 101.0]), 100.5)
    cal.update_prob("p_up", 0.7, 0.0)
    cal.last_resolved = "2025-05-01T14:00:00+00:00"
    path = cal.save(tmp_path / "online.json")
    back = OnlineCalibrator.load(path)
    assert json.loads(path.read_text())["format"] == "qqq-kronos-online-calibration"
    np.testing.assert_array_equal(back.w, cal.w)
    assert back.w[1].tolist() == pytest.approx([0.1 + 0.05 * (0.1 - 0), 0.9 + 0.05 * (0.9 - 1)])
    assert back.probs["p_up"].theta.tolist() == cal.probs["p_up"].theta.tolist()
    assert back.last_resolved == cal.last_resolved and back.n_band.tolist() == [0, 1, 0]
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError):
        OnlineCalibrator.load(tmp_path / "bad.json")


def test_replay_covers_nominal_for_a_forecaster_with_bands_far_too_narrow() -> None:
    """Outcomes from a t(4) law with a regime break; the forecaster states 0.4 of the true scale. The online
    10-90 band covers about 80 % in every part of the run, the raw one about a third."""
    rng = np.random.default_rng(7)
    O, H = 3000, 3
    origins = pd.date_range("2025-05-01 13:30", periods=O, freq="min", tz="UTC")
    sigma = np.where(np.arange(O) < O // 2, 1e-3, 2e-3)[:, None] * np.sqrt(np.arange(1, H + 1))[None]
    realised = 100 * np.exp(sigma * rng.standard_t(4, size=(O, H)) / np.sqrt(2))
    centre, scale = np.zeros((O, H)), 0.4 * sigma
    q, _, cal = replay_online(origins, np.full(O, H), centre, scale, np.full(O, 100.0), realised, (0.1, 0.9),
                              [None] * O, {}, gamma=0.02)
    inside = (realised >= q[:, 0]) & (realised <= q[:, 1])
    raw = np.abs(np.log(realised / 100)) <= 0.4 * sigma * stats.norm.ppf(0.9)
    assert raw[500:].mean() < 0.5
    for part in (slice(300, 1500), slice(1700, O)):
        assert abs(inside[part].mean() - 0.8) < 0.03
    assert cal.n_band.tolist() == [O - 1, O - 2, O - 3]  # the last forecasts have not resolved by the last origin


def _real_windows(csv: Path, every: int = 5, horizon: int = 30):
    """Origins every ``every`` minutes of each regular session of the real bars whose window ends in the session:
    now_close [O], realised closes [O, H], a random-walk scale per step from the last hour's 1-minute returns."""
    from marketdata.files import read_bars_file

    bars = read_bars_file(csv)
    et = bars.index.tz_convert("America/New_York")
    rth = bars[(et.time >= pd.Timestamp("09:30").time()) & (et.time < pd.Timestamp("16:00").time())]
    origins, now, real, sig, sess = [], [], [], [], []
    for day, g in rth.groupby(rth.index.tz_convert("America/New_York").date):
        close = g["close"].to_numpy(float)
        if len(close) < 380:  # a short or gappy session: not this test's business
            continue
        r = np.diff(np.log(close))
        for i in range(60, len(close) - horizon, every):
            origins.append(g.index[i])
            now.append(close[i - 1])
            real.append(close[i:i + horizon])
            sig.append(r[i - 60:i - 1].std(ddof=1))
            sess.append(str(day))
    steps = np.sqrt(np.arange(1, horizon + 1))
    return (pd.DatetimeIndex(origins), np.array(now), np.array(real), np.array(sig)[:, None] * steps[None],
            np.array(sess))


@pytest.mark.parametrize("width", [1.0, 0.4])
def test_online_bands_cover_nominal_on_the_real_bars(real_data_dir: Path, width: float) -> None:
    """A random walk with the last hour's volatility (width 1) and one whose bands are 0.4 times too narrow, every
    5 minutes of the 45 real QQQ sessions: the online 10-90 band at the horizon's end covers 80 % +- 3 pp, and
    every week's coverage lies in the 95 % range Binomial(n, 0.8) / n allows for its n independent windows."""
    origins, now, real, sigma, sess = _real_windows(real_data_dir / "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv")
    O, H = real.shape
    scale = width * sigma  # a normal's sigma is its 10-90 scale as forecast.calibrator defines it
    q, _, _ = replay_online(origins, np.full(O, H), np.zeros((O, H)), scale, now, real, (0.1, 0.9), [None] * O, {})
    inside = (real[:, -1] >= q[:, 0, -1]) & (real[:, -1] <= q[:, 1, -1])
    raw_hi = now * np.exp(stats.norm.ppf(0.9) * scale[:, -1])
    raw = (real[:, -1] <= raw_hi) & (real[:, -1] >= now * np.exp(-stats.norm.ppf(0.9) * scale[:, -1]))
    assert len(set(sess)) >= 40 and O > 2500
    if width < 1:
        assert raw.mean() < 0.5  # the narrow bands are caught raw...
    assert abs(inside[200:].mean() - 0.8) <= 0.03  # ...and online coverage is nominal after a short warm-up
    week = origins.tz_convert("America/New_York").strftime("%G-W%V")
    for w in np.unique(week[200:]):
        sel = (week == w) & (np.arange(O) >= 200)
        n = independent_windows(origins[sel], H, sess[sel])["n_independent"]
        lo, hi = stats.binom.ppf([0.025, 0.975], n, 0.8) / n
        assert lo <= inside[sel].mean() <= hi, w
