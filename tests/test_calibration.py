"""Calibrators: hand-checkable fits, an over-confident forecaster caught and fixed, walk-forward discipline,
JSON round trip and fitting from the forecast CLI's run log."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from support import simulated
from evaluation import calibration as cal, scoring
from forecast import calibrator as fcal

H = 5  # steps per synthetic window: enough to exercise per-step tables, small enough to be fast


def world(n: int, seed: int, overconfident: bool, m: int = 100) -> dict[str, np.ndarray]:
    """n windows: true log-returns per step are a random walk with a per-window volatility. The honest
    forecaster knows the volatility; the over-confident one shrinks it to 30 % and adds a random,
    useless drift, so its p_up is extreme and its bands cover far too little."""
    rng = np.random.default_rng(seed)
    sigma = 1e-3 * np.exp(rng.normal(0, 0.3, n))
    steps = np.arange(1, H + 1)
    truth = np.cumsum(rng.standard_normal((n, H)), axis=1) * sigma[:, None]
    scale = 0.3 if overconfident else 1.0
    drift = (rng.standard_normal(n) * 1.0 * sigma * math.sqrt(H)) if overconfident else np.zeros(n)
    ens = np.cumsum(rng.standard_normal((n, m, H)), axis=2) * (scale * sigma)[:, None, None]
    ens += drift[:, None, None] * steps / H
    now = np.full(n, 500.0)
    close_paths = now[:, None, None] * np.exp(ens)
    outcome = now[:, None] * np.exp(truth)
    p_up = (close_paths[:, :, -1] > now[:, None]).mean(axis=1)
    y = (outcome[:, -1] > now).astype(float)
    origins = pd.date_range("2025-05-01 14:00", periods=n, freq="10min", tz="UTC")
    return {"close_paths": close_paths, "outcome": outcome, "now": now, "p_up": p_up, "y": y, "origins": origins}


def coverage(q_lo: np.ndarray, q_hi: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    return scoring.band_coverage(q_lo, q_hi, outcome)


def test_platt_recovers_a_known_distortion() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.02, 0.98, 20000)
    truth = 1 / (1 + np.exp(-(0.5 * np.log(raw / (1 - raw)) + 0.2)))
    y = (rng.uniform(size=raw.size) < truth).astype(float)
    c = fcal.ProbabilityCalibrator.fit(raw, y, isotonic_min=10**9)
    assert c.method == "platt"
    assert c.params["a"] == pytest.approx(0.5, abs=0.05) and c.params["b"] == pytest.approx(0.2, abs=0.05)
    np.testing.assert_allclose(c.apply(raw), truth, atol=0.02)


def test_method_follows_the_number_of_outcomes() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=600)
    y = (rng.uniform(size=600) < p).astype(float)
    assert fcal.ProbabilityCalibrator.fit(p[:20], y[:20]).method == "identity"
    assert fcal.ProbabilityCalibrator.fit(p[:100], y[:100]).method == "platt"
    assert fcal.ProbabilityCalibrator.fit(p, y).method == "isotonic"
    assert fcal.ProbabilityCalibrator.fit(p, np.ones(600)).method == "identity"  # one class: nothing to learn
    iso = fcal.ProbabilityCalibrator.fit(p, y)
    out = iso.apply(np.linspace(0, 1, 101))
    assert np.all(np.diff(out) >= 0) and out.min() >= 1 / 602 and out.max() <= 1 - 1 / 602


def test_overconfident_forecaster_is_caught_and_fixed_on_held_out_data() -> None:
    train, test = world(1500, 2, True), world(1500, 3, True)
    levels = np.array([0.1, 0.9])
    # Caught: extreme p_up, large reliability term, 80 % bands covering a fraction.
    raw = scoring.brier_decomposition(test["p_up"], test["y"])
    assert raw["reliability"] > 0.05
    q = np.quantile(test["close_paths"], levels, axis=1)  # [2, O, H]
    raw_cov = coverage(q[0], q[1], test["outcome"])
    assert raw_cov.max() < 0.5
    # Fixed: fit on one sample, score another.
    pc = fcal.ProbabilityCalibrator.fit(train["p_up"], train["y"], train["origins"])
    bc = fcal.BandCalibrator.fit(fcal.band_scores(train["close_paths"], train["now"], train["outcome"]))
    fixed = scoring.brier_decomposition(pc.apply(test["p_up"]), test["y"])
    assert fixed["reliability"] < 0.01 and fixed["brier"] < raw["brier"]
    assert scoring.log_loss(pc.apply(test["p_up"]), test["y"]) < scoring.log_loss(test["p_up"], test["y"])
    qc = np.stack([bc.band_quantiles(cp, now, levels) for cp, now in zip(test["close_paths"], test["now"])])
    cov = coverage(qc[:, 0], qc[:, 1], test["outcome"])
    assert np.all(np.abs(cov - 0.8) < 0.05), cov


def test_band_calibration_leaves_an_honest_forecaster_alone() -> None:
    train, test = world(1500, 4, False), world(1500, 5, False)
    bc = fcal.BandCalibrator.fit(fcal.band_scores(train["close_paths"], train["now"], train["outcome"]))
    qc = np.stack([bc.band_quantiles(cp, now, [0.1, 0.9]) for cp, now in zip(test["close_paths"], test["now"])])
    q = np.quantile(test["close_paths"], [0.1, 0.9], axis=1)
    np.testing.assert_allclose(coverage(qc[:, 0], qc[:, 1], test["outcome"]),
                               coverage(q[0], q[1], test["outcome"]), atol=0.04)


def test_adjust_levels_widens_a_narrow_ensemble() -> None:
    # Ensembles 30 % too narrow (not so narrow that the PIT saturates at 0 / 1).
    rng = np.random.default_rng(6)
    n, m = 3000, 400
    ens = rng.standard_normal((n, m, 1)) * 0.7
    obs = rng.standard_normal((n, 1))
    pit = scoring.pit_values(ens[:, :, 0], obs[:, 0], rng)[:, None]
    bc = fcal.BandCalibrator.fit(np.zeros((n, 1)), pit=pit)
    lv = bc.adjust_levels(np.array([0.1, 0.9]), 1)[0]
    assert lv[0] < 0.05 and lv[1] > 0.95
    q = np.quantile(ens[:, :, 0], lv, axis=1)
    assert np.mean((obs[:, 0] >= q[0]) & (obs[:, 0] <= q[1])) == pytest.approx(0.8, abs=0.03)


def test_walk_forward_uses_only_resolved_outcomes() -> None:
    w = world(400, 7, True)
    horizon = 30  # origins every 10 min: the last 2 origins before t are not resolved at t
    p1, fits = cal.walk_forward_probability(w["origins"], w["p_up"], w["y"], horizon, refit_every=20)
    assert np.isnan(p1[: fcal.MIN_FIT_N + 2]).all() and np.isfinite(p1[-100:]).all()
    assert fits[0]["n"] == fcal.MIN_FIT_N
    # Changing outcomes from origin k on must not change any calibrated value before origin k + 3.
    k = 200
    y2 = w["y"].copy()
    y2[k:] = 1 - y2[k:]
    p2, _ = cal.walk_forward_probability(w["origins"], w["p_up"], y2, horizon, refit_every=20)
    np.testing.assert_array_equal(p1[: k + 3], p2[: k + 3])
    assert not np.allclose(p1[k + 3:], p2[k + 3:])
    # Walk-forward calibration fixes the reliability on the later half.
    late = slice(200, None)
    assert scoring.brier_decomposition(p1[late], w["y"][late])["reliability"] < 0.02
    assert scoring.brier_decomposition(w["p_up"][late], w["y"][late])["reliability"] > 0.05


def test_walk_forward_bands_reach_nominal_coverage() -> None:
    w = world(800, 8, True)
    q = cal.walk_forward_bands(w["origins"], w["close_paths"], w["now"], w["outcome"], 30, np.array([0.1, 0.9]),
                               refit_every=25)
    later = slice(300, None)
    cov = coverage(q[later, 0], q[later, 1], w["outcome"][later])
    assert np.all(np.abs(cov - 0.8) < 0.07), cov
    assert np.isnan(q[: fcal.MIN_FIT_N]).all()


def test_json_round_trip(tmp_path) -> None:
    w = world(700, 9, True)
    c = fcal.Calibrator(
        horizon_min=H,
        p_up=fcal.ProbabilityCalibrator.fit(w["p_up"], w["y"], w["origins"]),
        p_hit_vwap=fcal.ProbabilityCalibrator.fit(w["p_up"][:100], w["y"][:100], w["origins"][:100]),
        bands=fcal.BandCalibrator.fit(fcal.band_scores(w["close_paths"], w["now"], w["outcome"]), times=w["origins"]),
        meta={"forecaster": "overconfident"})
    path = c.save(tmp_path / "cal" / "calibrator.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == fcal.FORMAT and doc["version"] == fcal.VERSION
    assert doc["p_up"]["method"] == "isotonic" and doc["p_up"]["n"] == 700
    assert doc["p_up"]["fit_window"]["start"].startswith("2025-05-01T14:00")
    assert doc["p_hit_vwap"]["method"] == "platt"
    back = fcal.Calibrator.load(path)
    grid = np.linspace(0, 1, 51)
    np.testing.assert_array_equal(back.apply_p_up(grid), c.apply_p_up(grid))
    np.testing.assert_array_equal(back.apply_p_hit_vwap(grid), c.apply_p_hit_vwap(grid))
    np.testing.assert_allclose(back.band_quantiles(w["close_paths"][0], 500.0, [0.05, 0.95]),
                               c.band_quantiles(w["close_paths"][0], 500.0, [0.05, 0.95]))
    # The forecast CLI's call: load_calibrator(path).apply([p_up]).
    assert float(fcal.load_calibrator(path).apply([0.93])[0]) == pytest.approx(float(c.apply_p_up(0.93)))
    sbs = back.side_by_side(0.93, 500.0, w["close_paths"][0], p_hit_vwap=0.4)
    assert sbs["p_up_raw"] == 0.93 and sbs["p_up_cal"] < 0.8
    assert len(sbs["bands_cal"]) == len(sbs["levels"]) and len(sbs["bands_cal"][0]) == H
    doc["format"] = "something else"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError):
        fcal.Calibrator.load(tmp_path / "bad.json")


def pipeline(**changes):
    """A forecast pipeline (no engine needed) with a short lookback: run-log rows are replayed through it."""
    from app.config import build_config
    from forecast.pipeline import ForecastPipeline

    return ForecastPipeline(build_config({}, {"lookback": 60, **changes}), calibrator=None)


def test_fit_from_run_log(tmp_path) -> None:
    bars = simulated.simulate_bars("2025-03-03", 6, seed=12)
    rng = np.random.default_rng(13)
    ny = bars.index.tz_convert("America/New_York")
    origins = bars.index[(ny.minute % 5 == 0) & (ny.hour >= 10) & (ny.hour < 15)]
    rows = []
    for o in origins:
        now = float(bars["close"].loc[o - pd.Timedelta(minutes=1)])
        sd = 4e-4 * math.sqrt(30) * 0.3  # far too narrow
        mid = rng.normal(0, 2 * sd)
        rows.append({"asof": (o + pd.Timedelta(seconds=7)).isoformat(), "symbol": "QQQ", "now_close": now,
                     "horizon_min": 30, "p_up": float(np.clip(0.5 + 4 * mid / (sd * 10), 0.01, 0.99)),
                     "p10_end": now * math.exp(mid - 1.2816 * sd), "p50_end": now * math.exp(mid),
                     "p90_end": now * math.exp(mid + 1.2816 * sd)})
    log = pd.DataFrame(rows)
    log.to_csv(tmp_path / "runs.csv", index=False)
    c = cal.fit_from_run_log(tmp_path / "runs.csv", bars, pipeline(lookback=30), symbol="QQQ")
    assert c.horizon_min == 30 and c.p_up.n == len(log) and c.bands.n == len(log)
    assert c.p_up.method in ("platt", "isotonic")
    # The outcome of a run is the close of the last bar of [origin, origin + 30 min).
    out = cal.run_log_outcomes(log, bars, pipeline(lookback=30))
    first = pd.Timestamp(log["asof"].iloc[0]).floor("min")
    assert out["origin"].iloc[0] == first
    assert out["realised_close"].iloc[0] == bars["close"].loc[first + pd.Timedelta(minutes=29)]
    late = log.iloc[:1].assign(asof=(bars.index[-10] + pd.Timedelta(seconds=7)).isoformat())
    assert math.isnan(cal.run_log_outcomes(late, bars, pipeline())["realised_close"].iloc[0])  # not resolved yet
    # Calibrated end bands cover about 80 % (in sample), raw ones far less.
    z = np.log(log["p90_end"] / log["p10_end"]) / fcal.IQR_TO_SIGMA
    q = c.bands.score_quantile(30, [0.1, 0.9])
    real = np.array([bars["close"].loc[pd.Timestamp(a).floor("min") + pd.Timedelta(minutes=29)] for a in log["asof"]])
    lo = log["now_close"] * np.exp(np.log(log["p50_end"] / log["now_close"]) + z * q[0])
    hi = log["now_close"] * np.exp(np.log(log["p50_end"] / log["now_close"]) + z * q[1])
    assert np.mean((real >= lo) & (real <= hi)) == pytest.approx(0.8, abs=0.03)
    assert np.mean((real >= log["p10_end"]) & (real <= log["p90_end"])) < 0.5
    # No p_hit_vwap column in this log: that calibrator stays the identity.
    assert c.p_hit_vwap.method == "identity"
    # The end-step table serves every step.
    np.testing.assert_array_equal(c.bands.score_quantile(1, [0.5]), c.bands.score_quantile(30, [0.5]))


def test_run_log_origin_comes_from_the_last_bar_when_known() -> None:
    bars = simulated.simulate_bars("2025-03-03", 2, seed=14)
    t0 = pd.Timestamp("2025-03-04 11:00", tz="America/New_York").tz_convert("UTC")
    # A delayed-feed run at 11:00:07 whose last bar was 10:44: its window is 10:45 .. 11:14.
    log = pd.DataFrame({"asof": [(t0 + pd.Timedelta(seconds=7)).isoformat()] * 2, "horizon_min": [30] * 2,
                        "last_bar": [(t0 - pd.Timedelta(minutes=16)).isoformat(), None]})
    out = cal.run_log_outcomes(log, bars, pipeline(lookback=30))
    assert list(out["origin"]) == [t0 - pd.Timedelta(minutes=15), t0]
    assert out["realised_close"].iloc[0] == bars["close"].loc[t0 + pd.Timedelta(minutes=14)]
    assert out["realised_close"].iloc[1] == bars["close"].loc[t0 + pd.Timedelta(minutes=29)]


def test_realised_vwap_touch_follows_the_live_rule() -> None:
    from evaluation.outcome import realised_outcome
    from forecast.metrics import p_hit_vwap

    bars = simulated.simulate_bars("2025-03-03", 2, seed=15)
    origin = pd.Timestamp("2025-03-04 11:00", tz="America/New_York").tz_convert("UTC")
    now = float(bars["close"].loc[origin - pd.Timedelta(minutes=1)])
    today = bars[(bars.index >= pd.Timestamp("2025-03-04 14:30", tz="UTC")) & (bars.index < origin)]
    window = bars.loc[origin:origin + pd.Timedelta(minutes=29)]
    path = np.concatenate([window.to_numpy(float), np.zeros((30, 1))], axis=1)[None]
    context = bars[bars.index < origin]
    for mode in ("moving", "static"):
        out = realised_outcome(bars, context, window.index, vwap_mode=mode, mid_window=20, mid_kind="sma")
        assert out.hit_vwap == p_hit_vwap(path, today, now, mode)
    assert realised_outcome(bars, context, bars.index[-5:] + pd.Timedelta(minutes=30), vwap_mode="moving",
                            mid_window=20, mid_kind="sma") is None  # not over yet
