"""The CUDA path, on a GPU (skipped where torch sees none, as in CI; bench/gpu_checks.sh runs it on a GPU machine):
decode steps replayed from a CUDA graph equal the same steps launched one by one, in float32 and bfloat16; float32
on the GPU draws the CPU's tokens; bfloat16 stays within a stated distance of float32."""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
import torch

import kronos.sampler
from kronos import KronosPathSampler
from kronos.inputs import normalise
from kronos.sampler import uniforms
from support.kronos_checkpoints import write_checkpoint_pair
from support.qqq import QQQ, contexts, qqq_bars

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LOOKBACK, HORIZON = 480, 30
# bfloat16 against float32 on the same uniforms (stated in the README): the mean total-variation distance between
# their next-token distributions along float32's paths, and the shift of the end-of-horizon close quantiles in
# units of float32's interquartile range.
BF16_MAX_MEAN_TV = 0.05
BF16_MAX_QUANTILE_SHIFT = 0.15


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("kronos_cuda"), "small", seed=8)


@pytest.fixture
def inputs(real_data_dir):
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    x, xs, ys = contexts(values, stamps, LOOKBACK, HORIZON, 2, seed=42)
    x32 = torch.from_numpy(normalise(x)[0].astype(np.float32))
    return (x, xs, ys), (x32, torch.from_numpy(xs), torch.from_numpy(ys))


def decode(sampler, args, u, monkeypatch, **static):
    with monkeypatch.context() as m:
        m.setattr(kronos.sampler, "decode_paths", functools.partial(kronos.sampler.decode_paths, **static))
        return sampler.run_normalised(*args, u, 1.0, 0, 0.9)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_replay_equals_step_by_step(small, real_data_dir, dtype, monkeypatch):
    """Three calls of the same shapes with other contexts and seeds: the first captures the graph, the later ones
    replay it from the kept plan; each equals the same steps launched one by one."""
    graphs = KronosPathSampler.from_pretrained(*small, device="cuda", dtype=dtype)
    steps = KronosPathSampler.from_pretrained(*small, device="cuda", dtype=dtype, cuda_graphs=False)
    assert graphs.cuda_graphs and not steps.cuda_graphs
    values, stamps = qqq_bars(str(real_data_dir / QQQ))
    for seed in (42, 43, 42):
        x, xs, ys = contexts(values, stamps, LOOKBACK, HORIZON, 2, seed=seed)
        args = (torch.from_numpy(normalise(x)[0].astype(np.float32)), torch.from_numpy(xs), torch.from_numpy(ys))
        u = uniforms([seed, seed + 1], 64, HORIZON)
        replayed = graphs.run_normalised(*args, u, 1.0, 0, 0.9)
        one_by_one = decode(steps, args, u, monkeypatch, static=True)  # the same kernels, launched from Python
        assert torch.equal(replayed.s1, one_by_one.s1) and torch.equal(replayed.s2, one_by_one.s2), seed
        torch.testing.assert_close(replayed.values, one_by_one.values, rtol=0, atol=0)
        assert len(set(replayed.s1[0, :, -1].tolist())) > 1, "paths do not vary: the comparison would be weak"
    plan = next(iter(graphs.plans.plans.values()))
    assert len(graphs.plans.plans) == 1 and plan.decode.replay is not None, "no graph was kept"


def test_float32_on_the_gpu_draws_the_cpu_tokens(small, inputs):
    cpu = KronosPathSampler.from_pretrained(*small, device="cpu")
    gpu = KronosPathSampler.from_pretrained(*small, device="cuda")
    u = uniforms([3, 4], 32, HORIZON)
    a, b = cpu.run_normalised(*inputs[1], u, 1.0, 0, 0.9), gpu.run_normalised(*inputs[1], u, 1.0, 0, 0.9)
    same = (a.s1 == b.s1).all(-1) & (a.s2 == b.s2).all(-1)  # whole paths
    assert same.float().mean() >= 0.99, f"{int((~same).sum())} of {same.numel()} paths differ"
    torch.testing.assert_close(b.values[same], a.values[same], rtol=1e-4, atol=1e-4)


def next_token_probs(sampler, args, s1, s2) -> tuple[torch.Tensor, torch.Tensor]:
    """The s1 and s2 distributions [O, H, V] that `sampler`'s networks give at each step of the token paths
    s1, s2 [O, H] (teacher-forced, without caches: the s2 layer sees the window up to its step, as in decoding)."""
    x, xs, ys = (a.to(sampler.device) for a in args)
    s1, s2 = s1.to(sampler.device), s2.to(sampler.device)
    net, tok = sampler.model, sampler.tokenizer
    with torch.inference_mode():
        c1, c2 = tok.encode(x)
        window = net.forward(torch.cat([c1, s1[:, :-1]], 1), torch.cat([c2, s2[:, :-1]], 1),
                             torch.cat([xs, ys[:, :-1]], 1))  # [O, P + H - 1, d]
        p = window.shape[1] - HORIZON + 1
        h = window[:, p - 1 :]  # the states that draw the H new pairs
        p1 = net.head.proj_s1(h).float().softmax(-1)
        p2 = []
        for i in range(HORIZON):
            net.dep_layer.cache_prefix(window[:, : p + i])
            p2.append(net.head.proj_s2(net.dep_layer(net.embedding.emb_s1(s1[:, i]), h[:, i])).float().softmax(-1))
        net.clear_caches()
    return p1, torch.stack(p2, 1)


def test_bfloat16_stays_close_to_float32(small, inputs, tmp_path):
    fp32 = KronosPathSampler.from_pretrained(*small, device="cuda")
    bf16 = KronosPathSampler.from_pretrained(*small, device="cuda", dtype="bfloat16")
    raw = inputs[0]
    seeds = [5, 6]
    a = fp32.sample_batch(*raw, n_paths=2000, seeds=seeds)
    b = bf16.sample_batch(*raw, n_paths=2000, seeds=seeds)
    q = np.array([5, 25, 50, 75, 95])
    shifts = []
    for o in range(2):
        last = raw[0][o, -1, 3]
        ra, rb = a[o, :, -1, 3] / last - 1, b[o, :, -1, 3] / last - 1
        iqr = np.subtract(*np.percentile(ra, [75, 25]))
        shifts.append(np.abs(np.percentile(rb, q) - np.percentile(ra, q)).max() / iqr)
    # both networks' next-token distributions along one float32 path per origin
    g = fp32.run_normalised(*inputs[1], uniforms(seeds, 1, HORIZON), 1.0, 0, 0.9)
    p32 = next_token_probs(fp32, inputs[1], g.s1[:, 0], g.s2[:, 0])
    p16 = next_token_probs(bf16, inputs[1], g.s1[:, 0], g.s2[:, 0])
    tv = [0.5 * (x - y).abs().sum(-1).mean().item() for x, y in zip(p32, p16)]
    report = {"quantile_shift_iqr": [float(s) for s in shifts], "mean_tv_s1": tv[0], "mean_tv_s2": tv[1]}
    print("bf16 vs fp32:", json.dumps(report))
    if os.environ.get("KRONOS_GPU_REPORT"):
        with open(os.environ["KRONOS_GPU_REPORT"], "a") as f:
            f.write(json.dumps({"bf16_vs_fp32": report}) + "\n")
    assert max(tv) <= BF16_MAX_MEAN_TV, report
    assert max(shifts) <= BF16_MAX_QUANTILE_SHIFT, report
