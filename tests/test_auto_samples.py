"""n_samples: auto. Paths drawn in chunks are the paths of one fixed run of the same N with the same seed, bit for
bit; sampling stops for the documented reason; the stop rule keeps P(up)'s interval honest."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import cli_kronos_prob_qqq as cli
from app.config import ConfigError, build_config, load_config
from forecast import auto_samples
from forecast.auto_samples import next_chunk, sample_until_precise
from forecast.mc_error import proportion_interval
from forecast.publish import preflight
from kronos import KronosPathSampler
from support.kronos_checkpoints import frame_inputs, make_bars
from support.bars import TIMING_FREE

ASOF = pd.Timestamp("2025-06-04T15:00:00Z")


@pytest.fixture(scope="module")
def tiny(checkpoint_pairs):
    return checkpoint_pairs("tiny", 2)  # read only: shared by the session (conftest.py)


def forecast(tiny, synthetic_bars_csv, out, **settings):
    model, tokenizer = tiny
    cfg = load_config(None, {"source": "csv", "csv": str(synthetic_bars_csv), "model": str(model), "tokenizer": str(tokenizer),
                             "device": "cpu", "out": str(out), "seed": 3, "lookback": 64, "horizon": 10,
                             "time_budget": float(TIMING_FREE[1]), **settings})
    preflight(cfg.out, cfg.symbol)  # as cli.main does before a run
    return cli.run(cfg, ASOF, False, [])


def test_stream_draws_are_one_sample_call(tiny):
    sampler = KronosPathSampler.from_pretrained(*tiny, device="cpu")
    inputs = frame_inputs(*make_bars(80, 12, seed=5))
    whole = sampler.sample(*inputs, n_paths=50, seed=9)
    with sampler.open_stream(*inputs, seed=9) as stream:
        parts = [stream.draw(n) for n in (7, 30, 13)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # bit for bit
    with pytest.raises(RuntimeError):
        stream.draw(1)


def test_auto_run_equals_the_fixed_run_of_its_n(tiny, synthetic_bars_csv, tmp_path):
    auto = forecast(tiny, synthetic_bars_csv, tmp_path / "auto", n_samples="auto", p_up_precision=0.01)
    block = auto.summary["sampling"]
    n = auto.summary["n_samples"]
    assert block["stopped"] == "precision" and len(block["chunks"]) >= 2 and sum(block["chunks"]) == n
    # the stop, recomputed from the paths: the interval is narrow enough at N and was not before the last chunk
    up = auto.paths[:, -1, 3] > auto.context.now_close
    half = lambda m: np.diff(proportion_interval(int(up[:m].sum()), m))[0] / 2  # noqa: E731
    assert half(n) <= 0.01 < half(n - block["chunks"][-1])
    assert block["p_up_half_width"] == pytest.approx(half(n), abs=1e-6)

    fixed = forecast(tiny, synthetic_bars_csv, tmp_path / "fixed", n_samples=n)
    np.testing.assert_array_equal(auto.paths, fixed.paths)  # bit for bit
    assert auto.summary["summary"] == fixed.summary["summary"]
    assert fixed.summary["sampling"] == {"n_samples": n, "stopped": "fixed"}
    assert (tmp_path / "auto" / "paths_QQQ_latest.csv").read_bytes() == \
        (tmp_path / "fixed" / "paths_QQQ_latest.csv").read_bytes()


def test_auto_run_stops_at_max_samples(tiny, synthetic_bars_csv, tmp_path):
    fc = forecast(tiny, synthetic_bars_csv, tmp_path, n_samples="auto", p_up_precision=0.001, max_samples=150)
    assert fc.summary["n_samples"] == 150 == len(fc.paths)
    assert fc.summary["sampling"]["stopped"] == "max_samples" and fc.summary["sampling"]["chunks"] == [20, 20, 40, 70]
    log = pd.read_csv(tmp_path / "runs_QQQ.csv")
    assert log["n_samples"].tolist() == [150] and log["sampling_stop"].tolist() == ["max_samples"]


def coin_paths(rng: np.random.Generator, p: float, now: float = 100.0):
    """draw(n) of an engine whose paths end up with probability p: [n, 1, 6], close above or below now."""
    def draw(n: int) -> np.ndarray:
        close = np.where(rng.random(n) < p, now + 1.0, now - 1.0)
        return np.repeat(close[:, None, None], 6, axis=2)
    return draw


def test_next_chunk_by_hand():
    # 50 of 100 up: p = 50.5 / 101 = 0.5, need ceil(1.96^2 * 0.25 / 0.02^2) = 2401; at most doubling: 100 more
    assert next_chunk(50, 100, 0.02, 10_000) == 100
    assert next_chunk(800, 1600, 0.02, 10_000) == math.ceil(1.959964**2 * 0.25 / 0.02**2) - 1600 == 801
    assert next_chunk(800, 1600, 0.02, 1700) == 100  # never past max_samples
    assert next_chunk(0, 100, 0.2, 10_000) == 1     # already enough by the approximation: one more at least


def test_time_budget_stop_with_a_fake_clock():
    now = [0.0]
    draw = coin_paths(np.random.default_rng(0), 0.5)

    def timed_draw(n: int) -> np.ndarray:
        now[0] += 0.01 * n  # 10 ms per path
        return draw(n)

    res = sample_until_precise(timed_draw, 100.0, 0.01, 100_000, deadline=5.0, clock=lambda: now[0])
    assert res.stopped == "time_budget"
    n = len(res.paths)
    assert sum(res.chunks) == n and now[0] + n * auto_samples.AFTER_S_PER_PATH <= 5.0
    # the chunks used the time: fewer than MIN_CHUNK / FILL more paths would still have fitted
    assert (5.0 - now[0] - n * auto_samples.AFTER_S_PER_PATH) / (0.01 + auto_samples.AFTER_S_PER_PATH) < \
        auto_samples.MIN_CHUNK / auto_samples.FILL


def test_intervals_stay_honest_after_the_stop():
    """2,000 auto runs on an engine with P(up) = 0.6: the final interval covers 0.6 in 93-97 % of them."""
    rng = np.random.default_rng(11)
    covered, sizes = [], []
    for _ in range(2000):
        res = sample_until_precise(coin_paths(rng, 0.6), 100.0, 0.05, 5000, deadline=math.inf)
        k, n = int((res.paths[:, -1, 3] > 100.0).sum()), len(res.paths)
        lo, hi = stats.beta.ppf([0.025, 0.975], k + 0.5, n - k + 0.5)
        covered.append(lo <= 0.6 <= hi)
        sizes.append(n)
        assert res.stopped == "precision" and (hi - lo) / 2 <= 0.05
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)
    assert 300 < np.median(sizes) < 450  # 1.96^2 * 0.24 / 0.05^2 = 369 paths


def test_auto_is_a_number_key_word():
    assert build_config({"n_samples": "auto"}, {}).n_samples == "auto"
    assert build_config({}, {"n_samples": "AUTO"}).n_samples == "auto"
    assert build_config({}, {"n_samples": "250"}).n_samples == 250
    with pytest.raises(ConfigError, match="whole number or auto"):
        build_config({"n_samples": "lots"}, {})
    with pytest.raises(ConfigError, match="1..100000"):
        build_config({"n_samples": 0}, {})
    for script in ("backtest", "serve"):
        with pytest.raises(ConfigError, match="forecast CLI only"):
            build_config({"n_samples": "auto"}, {}, script=script)
