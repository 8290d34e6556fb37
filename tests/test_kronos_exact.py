"""Greedy decoding (top_k=1) of our engine reproduces the reference predictor on the same random weights."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kronos import KronosPathSampler
from kronos_checkpoints import write_checkpoint_pair


def make_bars(n: int, horizon: int, seed: int, columns: tuple[str, ...]) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Random-walk 5-minute bars; returns df, x_timestamp, y_timestamp (Series, as upstream expects)."""
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.5, n))
    open_ = close + rng.normal(0, 0.2, n)
    df = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + rng.uniform(0, 0.3, n),
                       "low": np.minimum(open_, close) - rng.uniform(0, 0.3, n), "close": close,
                       "volume": rng.uniform(1e4, 5e4, n)})
    df["amount"] = df["volume"] * close * rng.uniform(0.99, 1.01, n)
    stamps = pd.Series(pd.date_range("2024-03-01 09:30", periods=n + horizon, freq="5min"))
    return df[list(columns)], stamps[:n].reset_index(drop=True), stamps[n:].reset_index(drop=True)


ALL = ("open", "high", "low", "close", "volume", "amount")
CASES = [  # shape, lookback, horizon, columns (exercising the reference's missing-column rules)
    ("mini", 48, 8, ALL),
    ("mini", 200, 8, ALL[:5]),
    ("small", 64, 8, ALL),
    ("small", 128, 6, ALL[:4]),
    ("base", 32, 5, ALL),
    ("base", 64, 5, ALL[:5]),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("kronos_exact")
    return {shape: write_checkpoint_pair(root, shape, seed=1) for shape in ("mini", "small", "base")}


@pytest.mark.parametrize("shape,lookback,horizon,columns", CASES)
def test_greedy_matches_reference(checkpoints, shape, lookback, horizon, columns):
    from model import Kronos, KronosPredictor, KronosTokenizer

    model_dir, tok_dir = checkpoints[shape]
    df, x_ts, y_ts = make_bars(lookback, horizon, seed=lookback, columns=columns)
    ref = KronosPredictor(Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval(),
                          device="cpu", max_context=2048 if shape == "mini" else 512)
    with torch.random.fork_rng(devices=[]):
        expected = ref.predict(df, x_ts, y_ts, pred_len=horizon, T=1.0, top_k=1, top_p=1.0, sample_count=1,
                               verbose=False).to_numpy()

    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device="cpu")
    paths = sampler.sample(df, x_ts, y_ts, n_paths=3, top_k=1, seed=0)
    assert paths.shape == (3, horizon, 6)
    for path in paths:  # greedy: every path is the reference's single path
        np.testing.assert_allclose(path, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
