"""Fixed-shape decoding (kronos.graphs, static caches): the steps a CUDA graph replays draw the same tokens and
values as the step-by-step decode with growing caches. Checked here on the CPU, where the same code runs without
the graph; tests/test_kronos_cuda.py checks the replay itself on a GPU."""
from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

import kronos.graphs
import kronos.sampler
from kronos import KronosPathSampler
from kronos.inputs import normalise
from kronos.layers import CACHE_BUCKET
from kronos.sampler import uniforms
from support.kronos_checkpoints import write_checkpoint_pair
from support.qqq import QQQ, contexts, qqq_bars


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    pair = write_checkpoint_pair(tmp_path_factory.mktemp("kronos_static"), "mini", seed=6)
    return KronosPathSampler.from_pretrained(*pair, device="cpu")


def run(sampler, monkeypatch, x, xs, ys, u, top_k, top_p, **static):
    with monkeypatch.context() as m:
        m.setattr(kronos.sampler, "decode_paths", functools.partial(kronos.sampler.decode_paths, **static))
        return sampler.run_normalised(x, xs, ys, u, 1.0, top_k, top_p)


@pytest.mark.parametrize("horizon", [1, 2, 30, CACHE_BUCKET + 8])  # 40: the slots span two buckets
@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (0, 1.0), (5, 1.0)])
def test_static_decode_equals_growing_caches(sampler, real_data_dir, monkeypatch, horizon, top_k, top_p):
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    x, xs, ys = contexts(values, stamps, 200, horizon, 3, seed=horizon)
    x32 = torch.from_numpy(normalise(x)[0].astype(np.float32))
    args = (x32, torch.from_numpy(xs), torch.from_numpy(ys), uniforms([1, 2, 3], 16, horizon), top_k, top_p)
    growing = run(sampler, monkeypatch, *args)
    static = run(sampler, monkeypatch, *args, static=True)
    assert torch.equal(static.s1, growing.s1) and torch.equal(static.s2, growing.s2)
    torch.testing.assert_close(static.values, growing.values, rtol=1e-5, atol=1e-6)
    assert len(set(growing.s1[0, :, -1].tolist())) > 1, "paths do not vary: the comparison would be weak"


def test_failed_capture_falls_back_to_the_same_steps(sampler, real_data_dir, monkeypatch, caplog):
    """Where capture fails (simulated, so that this runs on any machine) the steps run one by one: the same
    results, and one warning per process."""
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    x, xs, ys = contexts(values, stamps, 100, 12, 2, seed=0)
    args = (torch.from_numpy(normalise(x)[0].astype(np.float32)), torch.from_numpy(xs), torch.from_numpy(ys),
            uniforms([4, 5], 8, 12), 0, 0.9)
    def no_graphs():
        raise RuntimeError("simulated: no graphs here")

    monkeypatch.setattr(kronos.graphs, "_capture_failed", False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graphs)
    with caplog.at_level(logging.WARNING, logger="kronos.graphs"), monkeypatch.context() as m:
        m.setattr(sampler, "cuda_graphs", True)  # the constructor allows it on CUDA only
        first = sampler.run_normalised(*args[:4], 1.0, *args[4:])
        second = sampler.run_normalised(*args[:4], 1.0, *args[4:])
    assert [r.message for r in caplog.records] == [
        "CUDA graph capture failed, decoding without graphs (slower, same results): simulated: no graphs here"]
    growing = run(sampler, monkeypatch, *args)
    for out in (first, second):
        assert torch.equal(out.s1, growing.s1) and torch.equal(out.s2, growing.s2)


def test_graphs_are_on_for_cuda_only(sampler):
    assert sampler.cuda_graphs is False
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        KronosPathSampler(sampler.model, sampler.tokenizer, device=torch.device("cpu"), cuda_graphs=True)


def test_a_kept_plan_serves_later_calls_with_other_inputs(sampler, real_data_dir, monkeypatch):
    """The second call of the same shapes reuses the first call's buffers (where a CUDA graph reads them): its
    prefix caches, stamps and uniforms must be this call's, and the per-path slots must start empty."""
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    calls = []
    for seed in (7, 8, 7):  # A, B, then A again
        x, xs, ys = contexts(values, stamps, 150, 20, 2, seed=seed)
        calls.append((torch.from_numpy(normalise(x)[0].astype(np.float32)), torch.from_numpy(xs),
                      torch.from_numpy(ys), uniforms([seed, seed + 1], 8, 20), 0, 0.9))
    sampler.plans.clear()
    kept = []
    for args in calls:
        static = run(sampler, monkeypatch, *args, static=True)
        kept.append(next(iter(sampler.plans.plans.values())))
        growing = run(sampler, monkeypatch, *args)
        assert torch.equal(static.s1, growing.s1) and torch.equal(static.s2, growing.s2)
        torch.testing.assert_close(static.values, growing.values, rtol=1e-5, atol=1e-6)
    assert len(sampler.plans.plans) == 1 and kept[0] is kept[1] is kept[2], "the plan was not reused"


def test_plans_of_uneven_chunks_keep_their_own_caches(sampler, real_data_dir, monkeypatch):
    """One prefill decoded in chunks of 3, 3 and 2 paths makes two plans from the same prefilled caches; the second
    must not take over the first's per-path slots (which the first's graph reads), on this call or the next."""
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    sampler.plans.clear()
    monkeypatch.setattr(sampler, "plan", lambda *shape: (1, 3))  # as a memory budget for 3 paths would
    for seed in (11, 12):  # the second call: another context, through both kept plans
        x, xs, ys = contexts(values, stamps, 120, 10, 1, seed=seed)
        args = (torch.from_numpy(normalise(x)[0].astype(np.float32)), torch.from_numpy(xs), torch.from_numpy(ys),
                uniforms([seed], 8, 10), 0, 0.9)
        static = run(sampler, monkeypatch, *args, static=True)
        growing = run(sampler, monkeypatch, *args)
        assert torch.equal(static.s1, growing.s1) and torch.equal(static.s2, growing.s2)
    assert len(sampler.plans.plans) == 2
