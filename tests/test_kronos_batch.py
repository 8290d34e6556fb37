"""An origin's results depend only on its own inputs and seed: its normalised input, tokens and paths are the
same alone and inside a batch of other origins, whatever the chunking; the normalisation is plain float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos import KronosPathSampler
from kronos.inputs import normalise
from kronos.sampler import uniforms
from support.kronos_checkpoints import frame_inputs, make_bars, write_checkpoint_pair

LOOKBACK, HORIZON, PATHS = 60, 5, 7


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, engine_device):
    pair = write_checkpoint_pair(tmp_path_factory.mktemp("kronos_batch"), "mini", seed=4)
    return KronosPathSampler.from_pretrained(*pair, device=engine_device)


def origins(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [frame_inputs(*make_bars(LOOKBACK, HORIZON, seed=20 + i)) for i in range(count)]
    values, xs, ys = (np.stack(a) for a in zip(*arrays))
    values[1] *= 5  # prices near 500, where float32 statistics would depend on the summation order
    return values, xs, ys


def test_normalisation_is_float64_by_hand():
    values, _, _ = origins(3)
    x_norm, mean, scale = normalise(values)
    for o in range(3):
        rows = values[o].tolist()
        for j in range(6):  # one column at a time, in plain Python floats (IEEE double)
            col = [r[j] for r in rows]
            m = sum(col) / len(col)
            sd = (sum((c - m) ** 2 for c in col) / len(col)) ** 0.5
            np.testing.assert_allclose(mean[o, 0, j], m, rtol=1e-13)
            np.testing.assert_allclose(scale[o, 0, j], sd + 1e-5, rtol=1e-13)
            expected = [min(5.0, max(-5.0, (c - m) / (sd + 1e-5))) for c in col]
            np.testing.assert_allclose(x_norm[o, :, j], expected, rtol=1e-12, atol=1e-12)
    assert x_norm.dtype == np.float64 and np.abs(x_norm).max() <= 5.0


def test_origin_alone_equals_origin_in_batch(sampler):
    values, xs, ys = origins(4)
    seeds = [11, 12, 13, 14]
    x_norm, _, _ = normalise(values)
    for o in range(4):  # normalised input: bit for bit
        np.testing.assert_array_equal(normalise(values[o : o + 1])[0][0], x_norm[o])

    def run(idx: list[int], budget: int | None) -> object:
        sampler.memory_budget = budget
        try:
            return sampler.run_normalised(torch.from_numpy(x_norm[idx].astype(np.float32)), torch.from_numpy(xs[idx]),
                                          torch.from_numpy(ys[idx]), uniforms([seeds[i] for i in idx], PATHS, HORIZON),
                                          1.0, 0, 0.9)
        finally:
            sampler.memory_budget = None

    batch = run([0, 1, 2, 3], None)
    for o in range(4):
        for idx, budget in (([o], None), ([(o + 2) % 4, o], None), ([o], 1)):  # alone, with another, 1 path/chunk
            alone = run(idx, budget)
            k = idx.index(o)
            assert torch.equal(alone.s1[k], batch.s1[o]) and torch.equal(alone.s2[k], batch.s2[o])
            torch.testing.assert_close(alone.values[k], batch.values[o], rtol=1e-5, atol=1e-5)

    # the public entry point: the same paths for an origin alone, in any batch, with the same seed
    paths = sampler.sample_batch(values, xs, ys, n_paths=PATHS, seeds=seeds)
    for o in range(4):
        alone = sampler.sample(values[o], xs[o], ys[o], n_paths=PATHS, seed=seeds[o])
        np.testing.assert_allclose(alone, paths[o], rtol=1e-5)
    reordered = sampler.sample_batch(values[::-1], xs[::-1], ys[::-1], n_paths=PATHS, seeds=seeds[::-1])
    np.testing.assert_allclose(reordered[::-1], paths, rtol=1e-5)


def test_tokenizer_decode_in_path_chunks_changes_nothing(sampler, monkeypatch):
    import kronos.sampler

    values, xs, ys = origins(2)
    whole = sampler.sample_batch(values, xs, ys, n_paths=PATHS, seeds=[1, 2])
    for name in ("TOKENIZER_ROWS", "TOKENIZER_ROWS_CUDA"):  # one path of each origin per call
        monkeypatch.setattr(kronos.sampler, name, 2 * HORIZON)
    np.testing.assert_allclose(sampler.sample_batch(values, xs, ys, n_paths=PATHS, seeds=[1, 2]), whole, rtol=1e-5)
