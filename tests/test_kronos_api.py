"""Public API: loading through the (offline) hub cache and local directories, checkpoint errors, input checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from kronos import CheckpointError, KronosPathSampler
from kronos.sampler import time_features
from kronos_checkpoints import install_in_hub_cache, write_checkpoint_pair
from test_kronos_exact import make_bars

HASH = "1234567890abcdef1234567890abcdef12345678"
ALL = ("open", "high", "low", "close", "volume", "amount")


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


def test_loads_through_hub_cache(hub_cache, mini):
    s = KronosPathSampler.from_pretrained(device="cpu")  # the default ids
    assert (s.model_source, s.tokenizer_source) == ("NeoQuasar/Kronos-small", "NeoQuasar/Kronos-Tokenizer-base")
    assert s.model_revision == s.tokenizer_revision == HASH
    assert s.max_context == 512  # from the hub id, not from the (mini) shape
    assert s.device == torch.device("cpu") and s.dtype == torch.float32
    pinned = KronosPathSampler.from_pretrained(model_revision=HASH, tokenizer_revision=HASH, device="cpu")
    assert pinned.model_revision == HASH
    df, x_ts, y_ts = make_bars(30, 3, seed=1, columns=ALL)
    local = KronosPathSampler.from_pretrained(*mini, device="cpu")
    np.testing.assert_array_equal(s.sample(df, x_ts, y_ts, n_paths=4, seed=3), local.sample(df, x_ts, y_ts, n_paths=4, seed=3))


def test_hub_errors_are_checkpoint_errors(hub_cache):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as err:
        KronosPathSampler.from_pretrained("NeoQuasar/Kronos-base", device="cpu")
    assert str(hub_cache) in str(err.value)
    with pytest.raises(CheckpointError, match="revision"):
        KronosPathSampler.from_pretrained(model_revision="f" * 40, device="cpu")


def test_local_checkpoint_properties(sampler, mini):
    assert sampler.max_context == 2048  # mini's (d_model, n_layers) shape
    assert sampler.model_revision is None and sampler.tokenizer_revision is None
    assert sampler.model_source == mini[0]
    for net in (sampler.predictor, sampler.tokenizer):
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())
    assert KronosPathSampler.from_pretrained(*mini, device="cpu", max_context=100).max_context == 100


def test_missing_files_and_wrong_kind(tmp_path, mini):
    with pytest.raises(CheckpointError, match="does not exist"):
        KronosPathSampler.from_pretrained(tmp_path / "nowhere", mini[1])
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(mini[0] / "config.json", partial)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        KronosPathSampler.from_pretrained(partial, mini[1])
    with pytest.raises(CheckpointError, match="predictor config"):
        KronosPathSampler.from_pretrained(mini[1], mini[1])  # a tokenizer where the model should be


@pytest.mark.parametrize("edit,message", [
    ("drop", "missing tensor head.proj_s1.weight"),
    ("extra", "unexpected tensor head.proj_s3.weight"),
    ("reshape", r"mis-shaped tensor head.proj_s1.weight: checkpoint \(1024, 7\)"),
])
def test_tensor_mismatch_is_named(tmp_path, mini, edit, message):
    bad = tmp_path / "bad"
    shutil.copytree(mini[0], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    if edit == "drop":
        del tensors["head.proj_s1.weight"]
    elif edit == "extra":
        tensors["head.proj_s3.weight"] = torch.zeros(2)
    else:
        tensors["head.proj_s1.weight"] = torch.zeros(1024, 7)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        KronosPathSampler.from_pretrained(bad, mini[1])


def test_config_shape_mismatch_is_named(tmp_path, mini):
    bad = tmp_path / "bad"
    shutil.copytree(mini[0], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_layers"] = 5
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing tensor transformer.4"):
        KronosPathSampler.from_pretrained(bad, mini[1])


def test_dtype_rules(mini):
    with pytest.raises(ValueError, match="CUDA"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="CUDA"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown dtype"):
        KronosPathSampler.from_pretrained(*mini, device="cpu", dtype="int8")


def test_output_shape_units_and_optional_columns(sampler):
    for columns in (ALL, ALL[:5], ALL[:4]):
        df, x_ts, y_ts = make_bars(50, 7, seed=2, columns=columns)
        paths = sampler.sample(df, pd.DatetimeIndex(x_ts), pd.DatetimeIndex(y_ts), n_paths=5, seed=0)
        assert paths.shape == (5, 7, 6) and paths.dtype == np.float64 and np.isfinite(paths).all()
        # in the units of df: prices stay near the context's level
        assert abs(np.median(paths[..., 3]) - df["close"].mean()) < 5 * df["close"].std() + 1
        if "volume" not in columns:
            np.testing.assert_allclose(paths[..., 4:], 0, atol=1e-4)


def test_time_features_use_wall_clock():
    ts = pd.date_range("2024-03-10 09:45", periods=2, freq="D", tz="America/New_York")
    feats = time_features(ts)
    assert feats.tolist() == [[45, 9, 6, 10, 3], [45, 9, 0, 11, 3]]  # across the DST change: still 09:45


def bad_inputs():
    df, x_ts, y_ts = make_bars(40, 5, seed=4, columns=ALL)
    nan = df.copy()
    nan.loc[3, "close"] = np.nan
    shuffled = x_ts.copy()
    shuffled[[5, 6]] = shuffled[[6, 5]].to_numpy()
    return [
        (dict(df=df.drop(columns="low")), "low"),
        (dict(df=nan), "NaN"),
        (dict(x_timestamp=x_ts[:-1]), "39 entries"),
        (dict(x_timestamp=shuffled), "strictly increasing"),
        (dict(y_timestamp=y_ts - pd.Timedelta(hours=1)), "strictly increasing"),
        (dict(n_paths=0), "n_paths"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
    ], (df, x_ts, y_ts)


@pytest.mark.parametrize("case", range(10))
def test_input_errors(sampler, case):
    cases, (df, x_ts, y_ts) = bad_inputs()
    override, message = cases[case]
    args = dict(df=df, x_timestamp=x_ts, y_timestamp=y_ts, n_paths=2) | override
    with pytest.raises(ValueError, match=message):
        sampler.sample(**args)


def test_context_too_long(mini):
    small = KronosPathSampler.from_pretrained(*mini, device="cpu", max_context=44)
    df, x_ts, y_ts = make_bars(40, 5, seed=4, columns=ALL)
    with pytest.raises(ValueError, match="at most 39 rows"):
        small.sample(df, x_ts, y_ts, n_paths=2)


def test_sample_batch_matches_single_origins(sampler):
    a, b = make_bars(30, 4, seed=6, columns=ALL), make_bars(30, 4, seed=8, columns=ALL[:5])
    batch = sampler.sample_batch([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], n_paths=6, seed=5)
    assert batch.shape == (2, 6, 4, 6)
    np.testing.assert_allclose(batch[0], sampler.sample(*a, n_paths=6, seed=5), rtol=1e-5)
    sampler.memory_budget = 1  # one origin and one path at a time: same results
    try:
        np.testing.assert_allclose(sampler.sample_batch([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], n_paths=6, seed=5),
                                   batch, rtol=1e-5)
    finally:
        sampler.memory_budget = None
    greedy = sampler.sample_batch([a[0], b[0]], [a[1], b[1]], [a[2], b[2]], n_paths=2, top_k=1)
    np.testing.assert_allclose(greedy[1], sampler.sample(*b, n_paths=2, top_k=1), rtol=1e-5)
    with pytest.raises(ValueError, match="same lookback"):
        sampler.sample_batch([a[0], b[0][:20]], [a[1], b[1][:20]], [a[2], b[2]])
