"""Public API: loading through the (offline) hub cache and local directories, array inputs and their checks,
the column rules, seeds per origin."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kronos
from kronos import CONTEXT_BY_REPO, CheckpointError, KronosPathSampler, complete_columns
from support.kronos_checkpoints import frame_inputs, install_in_hub_cache, make_bars, time_features, write_checkpoint_pair

HASH = "1234567890abcdef1234567890abcdef12345678"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("kronos_api"), "mini", seed=3)


@pytest.fixture(scope="module")
def sampler(mini):
    return KronosPathSampler.from_pretrained(*mini, device="cpu")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, mini):
    """A hub cache holding the mini pair under the published Kronos-small/Tokenizer-base ids."""
    cache = tmp_path / "hub"
    install_in_hub_cache(cache, "NeoQuasar/Kronos-small", mini[0], HASH)
    install_in_hub_cache(cache, "NeoQuasar/Kronos-Tokenizer-base", mini[1], HASH)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_package_surface():
    assert set(kronos.__all__) == {"CONTEXT_BY_REPO", "CheckpointError", "KronosPathSampler", "complete_columns"}
    assert CONTEXT_BY_REPO["NeoQuasar/Kronos-mini"] == 2048 and CONTEXT_BY_REPO["NeoQuasar/Kronos-small"] == 512
    from kronos import sampler

    assert not hasattr(sampler, "frame_to_arrays")  # pandas stays with the caller


def test_loads_through_hub_cache(hub_cache, mini):
    s = KronosPathSampler.from_pretrained(device="cpu")  # the default ids
    assert (s.model_source, s.tokenizer_source) == ("NeoQuasar/Kronos-small", "NeoQuasar/Kronos-Tokenizer-base")
    assert s.model_revision == s.tokenizer_revision == HASH
    assert s.max_context == 512  # from the hub id, not from the (mini) shape
    assert s.device == torch.device("cpu") and s.dtype == torch.float32
    pinned = KronosPathSampler.from_pretrained(model_revision=HASH, tokenizer_revision=HASH, device="cpu")
    assert pinned.model_revision == HASH
    inputs = frame_inputs(*make_bars(30, 3, seed=1))
    local = KronosPathSampler.from_pretrained(*mini, device="cpu")
    np.testing.assert_array_equal(s.sample(*inputs, n_paths=4, seed=3), local.sample(*inputs, n_paths=4, seed=3))


def test_hub_errors_are_checkpoint_errors(hub_cache):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as err:
        KronosPathSampler.from_pretrained("NeoQuasar/Kronos-base", device="cpu")
    assert str(hub_cache) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="revision"):
        KronosPathSampler.from_pretrained(model_revision="f" * 40, device="cpu")


def test_local_checkpoint_properties(sampler, mini):
    assert sampler.max_context == 2048  # mini's (d_model, n_layers) shape
    assert sampler.model_revision is None and sampler.tokenizer_revision is None
    assert sampler.model_source == mini[0]
    for net in (sampler.model, sampler.tokenizer):
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())
    assert KronosPathSampler.from_pretrained(*mini, device="cpu", max_context=100).max_context == 100


def test_dtype_rules(mini):
    with pytest.raises(ValueError, match="CUDA"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="CUDA"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown dtype"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype="int8")


def test_complete_columns_follows_the_reference_rules():
    rng = np.random.default_rng(0)
    ohlcv = rng.uniform(90, 110, (2, 7, 5))
    ohlcv[..., 4] = rng.uniform(1e3, 1e4, (2, 7))
    six = complete_columns(ohlcv)
    assert six.shape == (2, 7, 6) and six.dtype == np.float64
    np.testing.assert_array_equal(six[..., :5], ohlcv)
    # the reference: df["amount"] = df["volume"] * df[["open", "high", "low", "close"]].mean(axis=1)
    np.testing.assert_allclose(six[..., 5], ohlcv[..., 4] * ohlcv[..., :4].mean(-1), rtol=1e-15)
    four = complete_columns(ohlcv[0, :, :4].astype(np.float32))
    assert four.shape == (7, 6) and (four[:, 4:] == 0).all()
    np.testing.assert_array_equal(complete_columns(six), six)
    with pytest.raises(ValueError, match="4 .*5 .*6"):
        complete_columns(np.zeros((3, 3)))


def test_time_features_helper_uses_wall_clock():
    import pandas as pd

    ts = pd.date_range("2024-03-10 09:45", periods=2, freq="D", tz="America/New_York")
    assert time_features(ts).tolist() == [[45, 9, 6, 10, 3], [45, 9, 0, 11, 3]]  # across the DST change


def test_output_shape_units_and_column_rules(sampler):
    for columns in (("open", "high", "low", "close", "volume", "amount"), ("open", "high", "low", "close")):
        df, x_ts, y_ts = make_bars(50, 7, seed=2, columns=columns)
        paths = sampler.sample(*frame_inputs(df, x_ts, y_ts), n_paths=5, seed=0)
        assert paths.shape == (5, 7, 6) and paths.dtype == np.float64 and np.isfinite(paths).all()
        # in the units of the input: prices stay near the context's level
        assert abs(np.median(paths[..., 3]) - df["close"].mean()) < 5 * df["close"].std() + 1
        if "volume" not in columns:
            np.testing.assert_allclose(paths[..., 4:], 0, atol=1e-4)


def bad_inputs():
    values, xs, ys = frame_inputs(*make_bars(40, 5, seed=4))
    nan = values.copy()
    nan[3, 3] = np.nan
    wild = xs.copy()
    wild[2, 1] = 24  # hour 24
    return [
        (dict(values=values[:, :5]), r"shape \[P, 6\]"),
        (dict(values=nan), "NaN or infinite entries in column.*close"),
        (dict(values=values.astype(str)), "numeric"),
        (dict(x_stamp=xs[:-1]), "39 time steps but values have 40"),
        (dict(x_stamp=xs.astype(float)), "integers"),
        (dict(x_stamp=wild), "hour must be in 0..23"),
        (dict(y_stamp=ys[:, :4]), r"y_stamp must have shape \[T, 5\]"),
        (dict(y_stamp=-ys), "minute must be in 0..59"),
        (dict(n_paths=0), "n_paths"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
    ], (values, xs, ys)


@pytest.mark.parametrize("case", range(16))
def test_input_errors(sampler, case):
    cases, (values, xs, ys) = bad_inputs()
    override, message = cases[case]
    args = dict(values=values, x_stamp=xs, y_stamp=ys, n_paths=2) | override
    with pytest.raises(ValueError, match=message):
        sampler.sample(**args)


def test_batch_input_errors(sampler):
    values, xs, ys = frame_inputs(*make_bars(30, 4, seed=6))
    v, x, y = (np.stack([a, a]) for a in (values, xs, ys))
    with pytest.raises(ValueError, match=r"values must have shape \[O, P, 6\]"):
        sampler.sample_batch(values, x, y)
    with pytest.raises(ValueError, match="y_stamp has 1 origins but values have 2"):
        sampler.sample_batch(v, x, y[:1])
    with pytest.raises(ValueError, match="seeds has 1 entries but there are 2 origins"):
        sampler.sample_batch(v, x, y, seeds=[1])
    with pytest.raises(ValueError, match="sequence"):
        sampler.sample_batch(v, x, y, seeds=5)


def test_context_too_long(mini):
    small = KronosPathSampler.from_pretrained(*mini, device="cpu", max_context=44)
    with pytest.raises(ValueError, match="at most 39 rows"):
        small.sample(*frame_inputs(*make_bars(40, 5, seed=4)), n_paths=2)


def test_sample_is_sample_batch_of_one(sampler):
    values, xs, ys = frame_inputs(*make_bars(30, 4, seed=6))
    one = sampler.sample(values, xs, ys, n_paths=6, seed=5)
    batch = sampler.sample_batch(values[None], xs[None], ys[None], n_paths=6, seeds=[5])
    np.testing.assert_array_equal(one, batch[0])
    greedy = sampler.sample(values, xs, ys, n_paths=2, top_k=1)  # fresh entropy, but greedy: all paths equal
    np.testing.assert_array_equal(greedy[0], greedy[1])
