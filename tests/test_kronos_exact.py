"""Greedy decoding (top_k=1) of our engine reproduces the reference on the same random weights, token for token.

Contexts are real QQQ 1-minute bars at random offsets and several lookbacks. The reference is fed exactly our
float64 normalisation (through its auto_regressive_inference), so both engines see identical float32 inputs; the
sampled tokens of every step must then be equal, and the decoded values equal up to float32 rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kronos import KronosPathSampler
from kronos.inputs import normalise
from kronos.sampler import uniforms
from support.kronos_checkpoints import write_checkpoint_pair
from support.qqq import QQQ, contexts, qqq_bars

CONTEXT = {"mini": 2048, "small": 512, "base": 512}
# shape -> (lookback, horizon, contexts): reference cost grows with lookback x horizon x model size
CASES = {
    "mini": [(48, 6, 6), (300, 6, 6), (1000, 4, 4)],
    "small": [(64, 5, 6), (256, 4, 6), (480, 3, 4)],
    "base": [(40, 3, 6), (160, 3, 4)],
}


def reference_greedy(model_dir: Path, tok_dir: Path, x32: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                     horizon: int, max_context: int, monkeypatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's auto_regressive_inference on our normalised input -> (values [C, H, 6], s1, s2 [C, H])."""
    import model.kronos as ref
    from model import Kronos, KronosTokenizer

    drawn: list[torch.Tensor] = []
    original = ref.sample_from_logits

    def recording(*args, **kwargs):  # called for s1, then s2, at every step
        out = original(*args, **kwargs)
        drawn.append(out.clone())
        return out

    monkeypatch.setattr(ref, "sample_from_logits", recording)
    net, tok = Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval()
    with torch.random.fork_rng(devices=[]):
        preds = ref.auto_regressive_inference(tok, net, torch.from_numpy(x32), torch.from_numpy(xs).float(),
                                              torch.from_numpy(ys).float(), max_context, horizon, clip=5, T=1.0,
                                              top_k=1, top_p=1.0, sample_count=1)
    monkeypatch.undo()
    s1 = torch.cat(drawn[0::2], dim=1).numpy()
    s2 = torch.cat(drawn[1::2], dim=1).numpy()
    return preds[:, -horizon:], s1, s2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("kronos_exact")
    return {shape: write_checkpoint_pair(root, shape, seed=1) for shape in CASES}


@pytest.mark.parametrize("shape", list(CASES))
def test_greedy_paths_equal_reference_on_real_bars(checkpoints, shape, real_data_dir, monkeypatch, engine_device):
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    model_dir, tok_dir = checkpoints[shape]
    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device=engine_device)
    for i, (lookback, horizon, count) in enumerate(CASES[shape]):
        x, xs, ys = contexts(values, stamps, lookback, horizon, count, seed=100 * list(CASES).index(shape) + i)
        x_norm, mean, scale = normalise(x)
        x32 = x_norm.astype(np.float32)
        ref_values, ref_s1, ref_s2 = reference_greedy(model_dir, tok_dir, x32, xs, ys, horizon, CONTEXT[shape],
                                                      monkeypatch)
        ours = sampler.run_normalised(torch.from_numpy(x32), torch.from_numpy(xs), torch.from_numpy(ys),
                                      uniforms([0] * count, 2, horizon), 1.0, 1, 1.0)
        where = f"{shape}, lookback {lookback}"
        for path in range(2):  # greedy: every path is the reference's single path
            np.testing.assert_array_equal(ours.s1[:, path].numpy(), ref_s1, err_msg=f"s1 tokens, {where}")
            np.testing.assert_array_equal(ours.s2[:, path].numpy(), ref_s2, err_msg=f"s2 tokens, {where}")
            np.testing.assert_allclose(ours.values[:, path].numpy(), ref_values, rtol=1e-4, atol=2e-5, err_msg=where)
        # the public entry point gives the same paths, in price units (denormalised in float64)
        paths = sampler.sample_batch(x, xs, ys, n_paths=2, top_k=1, seeds=list(range(count)))
        expected = ref_values.astype(np.float64) * scale + mean
        for path in range(2):  # within float32 rounding of the normalised values, scaled back
            assert (np.abs(paths[:, path] - expected) <= 1e-4 * scale + 1e-12 * np.abs(mean)).all(), where
