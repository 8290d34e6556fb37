"""Baseline forecasters: shape and bar consistency, no peeking, calibration on a simulated random walk."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from support import simulated
from evaluation import baselines
from evaluation import scoring

H = 30


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulated.simulate_bars("2025-03-03", 25, seed=11)


def _history(frame: pd.DataFrame, origin: pd.Timestamp, days: int = 5) -> pd.DataFrame:
    return frame[(frame.index < origin) & (frame.index >= origin - pd.Timedelta(days=days))]


def _future(origin: pd.Timestamp, h: int = H) -> pd.DatetimeIndex:
    return pd.date_range(origin, periods=h, freq="min")


def _origins(frame: pd.DataFrame, skip_sessions: int = 3) -> list[pd.Timestamp]:
    """Non-overlapping 30-minute windows 10:00 .. 15:30 ET of each session after the first few."""
    ny = frame.index.tz_convert("America/New_York")
    days = sorted(set(ny.date))[skip_sessions:]
    out = []
    for d in days:
        for hh, mm in [(h, m) for h in range(10, 16) for m in (0, 30)]:
            out.append(pd.Timestamp(f"{d} {hh:02d}:{mm:02d}", tz="America/New_York").tz_convert("UTC"))
    return out


@pytest.mark.parametrize("forecaster", simulated.default_baselines(), ids=lambda f: f.name)
def test_paths_are_consistent_bars(sim: pd.DataFrame, forecaster: baselines.PathForecaster) -> None:
    origin = _origins(sim)[5]
    hist = _history(sim, origin)
    paths = forecaster.sample(hist, _future(origin), 64, np.random.default_rng(0))
    assert paths.shape == (64, H, 6) and np.isfinite(paths).all()
    o, h, l, c, v, a = np.moveaxis(paths, -1, 0)
    assert np.all(o[:, 0] == hist["close"].iloc[-1])
    np.testing.assert_array_equal(o[:, 1:], c[:, :-1])
    assert np.all(h >= np.maximum(o, c)) and np.all(l <= np.minimum(o, c))
    assert np.all(v > 0) and np.allclose(a, v * (o + h + l + c) / 4)
    assert isinstance(forecaster, baselines.PathForecaster)


@pytest.mark.parametrize("forecaster", simulated.default_baselines(), ids=lambda f: f.name)
def test_same_seed_same_paths_and_future_refused(sim: pd.DataFrame, forecaster: baselines.PathForecaster) -> None:
    origin = _origins(sim)[7]
    hist = _history(sim, origin)
    a = forecaster.sample(hist, _future(origin), 16, np.random.default_rng(5))
    b = forecaster.sample(hist, _future(origin), 16, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        forecaster.sample(hist, _future(origin - pd.Timedelta(minutes=5)), 4, np.random.default_rng(0))


def test_random_walk_recovers_the_time_of_day_volatility(sim: pd.DataFrame) -> None:
    origin = _origins(sim)[-12]  # 10:00 ET, 30 minutes into the session
    sig = baselines.RandomWalk().sigmas(_history(sim, origin), _future(origin))
    true = 4e-4 * simulated.u_shape_profile(np.arange(30, 60))
    assert np.median(sig / true) == pytest.approx(1.0, abs=0.15)


def test_block_bootstrap_reuses_same_time_returns_of_earlier_sessions() -> None:
    frame = simulated.simulate_bars("2025-03-03", 4, seed=3)
    origin = pd.Timestamp("2025-03-06 11:00", tz="America/New_York").tz_convert("UTC")
    hist = _history(frame, origin)
    paths = baselines.BlockBootstrap(block=5, demean=False, jitter=0).sample(hist, _future(origin, 10), 200, np.random.default_rng(1))
    inc = np.diff(np.log(np.concatenate([np.full((200, 1), hist["close"].iloc[-1]), paths[:, :, 3]], axis=1)), axis=1)
    rets = baselines.session_returns(hist)
    for step, t in enumerate(_future(origin, 10)):
        tod = baselines.minute_of_day(pd.DatetimeIndex([t]))[0]
        allowed = rets[(rets["tod"] == tod) & (rets["day"] != origin.tz_convert("America/New_York").date())]["r"]
        assert len(allowed) == 3
        assert np.isin(np.round(inc[:, step], 12), np.round(allowed.to_numpy(), 12)).all()
    # Within a block the increments come from one session: steps 0..4 move together.
    assert len({tuple(np.round(r, 12)) for r in inc[:, :5]}) <= 3


def test_random_walk_is_calibrated_on_a_simulated_random_walk(sim: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    rw = baselines.RandomWalk()
    p_up, y, pit, lo, hi, end = [], [], [], [], [], []
    for origin in _origins(sim):
        hist = _history(sim, origin)
        paths = rw.sample(hist, _future(origin), 400, rng)
        closes = paths[:, -1, 3]
        now = hist["close"].iloc[-1]
        real = sim["close"].loc[origin + pd.Timedelta(minutes=H - 1)]
        p_up.append((closes > now).mean())
        y.append(float(real > now))
        pit.append(scoring.pit_values(closes[None], np.array([real]), rng)[0])
        q = np.quantile(closes, [0.1, 0.9])
        lo.append(q[0]), hi.append(q[1]), end.append(real)
    n = len(y)
    assert n == 22 * 12
    cover = float(scoring.band_coverage(np.array(lo)[:, None], np.array(hi)[:, None], np.array(end)[:, None])[0])
    se = math.sqrt(0.8 * 0.2 / n)
    assert abs(cover - 0.8) < 3.5 * se, cover
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    # Zero drift: p_up ~ 0.5 everywhere, and half the windows did go up (within sampling error).
    assert abs(np.mean(y) - np.mean(p_up)) < 3.5 * math.sqrt(0.25 / n)
    assert scoring.brier_decomposition(np.array(p_up), np.array(y))["reliability"] < 0.01
