"""Sampling semantics: top-k/top-p filtering equals the reference (and the old full-sort rule), draws follow the
filtered distribution, sampled paths match the reference predictor statistically, seeds behave as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos import KronosPathSampler
from kronos.sampler import filter_logits, filter_logits_full_sort, nucleus_keep, sample_tokens
from support.kronos_checkpoints import frame_inputs, make_bars, write_checkpoint_pair


def full_sort_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The previous implementation (a full sort of every row), kept here as the rule to match exactly."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        drop = ordered.softmax(-1).cumsum(-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@pytest.mark.parametrize("top_k,top_p", [(0, 0.1), (0, 0.5), (0, 0.9), (0, 0.999), (0, 1.0), (1, 0.9), (5, 1.0),
                                         (50, 0.5), (5000, 0.9)])
def test_filter_matches_reference(top_k, top_p):
    from model.kronos import top_k_top_p_filtering

    gen = torch.Generator().manual_seed(top_k * 7 + int(top_p * 1000))
    for scale in (0.5, 3.0, 10.0):
        logits = torch.randn(16, 1024, generator=gen) * scale
        logits[0, :4] = logits[0, 4]  # some ties
        # the reference only calls its filter when one is active (it returns None otherwise)
        active = top_k > 0 or top_p < 1.0
        expected = top_k_top_p_filtering(logits.clone(), top_k=top_k, top_p=top_p) if active else logits
        assert torch.equal(filter_logits(logits, top_k, top_p), expected)


def edge_rows(gen: torch.Generator) -> torch.Tensor:
    """Rows that stress the partial selection: flat, one-hot, ties at and across the cut, huge nuclei."""
    v = 1024
    rows = [torch.zeros(v), torch.full((v,), -3.0)]  # all tied: the cut falls inside the tie
    one_hot = torch.full((v,), -50.0)
    one_hot[17] = 10.0
    rows.append(one_hot)
    two = torch.full((v,), -50.0)
    two[[3, 900]] = 5.0  # two equal tokens holding all the mass
    rows.append(two)
    steps = torch.randint(0, 6, (v,), generator=gen).float()  # few distinct values, many ties everywhere
    rows += [steps, steps * 0.1, -steps]
    rows.append(torch.randn(v, generator=gen) * 0.01)  # nearly flat: the nucleus needs hundreds of tokens
    rows.append(torch.linspace(0, 1, v))  # sorted input
    rows.append(torch.randn(v, generator=gen).round(decimals=1))  # ties from rounding
    return torch.stack(rows)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.7, 0.9, 0.95, 0.999, 0.9999999])
def test_partial_nucleus_equals_full_sort(top_p):
    gen = torch.Generator().manual_seed(int(top_p * 1e6))
    batches = [edge_rows(gen)] + [torch.randn(64, 1024, generator=gen) * s for s in (0.05, 1.0, 4.0, 30.0)]
    for logits in batches:
        expected = full_sort_filter(logits, 0, top_p)
        assert torch.equal(filter_logits(logits, 0, top_p), expected)
        for k0 in (1, 2, 7, 64, 1024):  # every growth path of the partial selection
            keep = nucleus_keep(logits, logits.softmax(-1), top_p, k0=k0)
            assert torch.equal(keep, expected > float("-inf")), f"k0={k0}"
    assert torch.equal(filter_logits_full_sort(batches[1], top_p), full_sort_filter(batches[1], 0, top_p))


def test_sample_tokens_follows_filtered_distribution():
    from model.kronos import top_k_top_p_filtering

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1024, generator=gen) * 3
    for temperature, top_k, top_p in [(1.0, 0, 0.9), (0.7, 0, 1.0), (1.3, 20, 1.0), (1.0, 0, 0.5)]:
        scaled = logits.clone() / temperature
        probs = torch.softmax(top_k_top_p_filtering(scaled, top_k, top_p) if top_k or top_p < 1 else scaled, -1)[0]
        n = 40_000
        draws = sample_tokens(logits.expand(n, -1), torch.rand(n, generator=gen), temperature, top_k, top_p)
        freq = torch.bincount(draws, minlength=1024).double() / n
        assert (freq[probs == 0] == 0).all(), "a filtered-out token was drawn"
        se = (probs.double() * (1 - probs.double()) / n).sqrt()
        assert ((freq - probs.double()).abs() <= 5 * se + 5 / n).all()  # 5/n: Poisson slack for rare tokens


def test_sample_tokens_extreme_uniforms_stay_in_the_kept_set():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0] + [-40.0] * 60])
    for u in (0.0, 0.5, 1.0 - 2**-24):
        for top_k, top_p in [(0, 0.5), (2, 1.0), (0, 1.0)]:
            token = sample_tokens(logits, torch.tensor([u]), 1.0, top_k, top_p)
            assert filter_logits(logits, top_k, top_p)[0, token] > float("-inf")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("kronos_sampling"), "mini", seed=2)


def test_path_distribution_matches_reference(mini, engine_device):
    """Mean of many of our paths vs the reference's average over its own paths, at T=1, top_p=0.9."""
    from model import Kronos, KronosPredictor, KronosTokenizer

    model_dir, tok_dir = mini
    horizon, n_ref, n_ours = 4, 400, 3000
    df, x_ts, y_ts = make_bars(32, horizon, seed=5)
    ref = KronosPredictor(Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval(),
                          device="cpu", max_context=2048)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        ref_mean = ref.predict(df, x_ts, y_ts, pred_len=horizon, T=1.0, top_k=0, top_p=0.9, sample_count=n_ref,
                               verbose=False).to_numpy()
    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device=engine_device)
    paths = sampler.sample(*frame_inputs(df, x_ts, y_ts), n_paths=n_ours, temperature=1.0, top_k=0, top_p=0.9, seed=7)
    mean, std = paths.mean(0), paths.std(0)
    assert (std > 0).all(), "paths do not vary: the test would have no power"
    z = (mean - ref_mean) / (std * np.sqrt(1 / n_ours + 1 / n_ref))
    assert np.abs(z).max() < 5, f"max |z| {np.abs(z).max():.2f}"


def test_seed_chunking_and_global_rng(mini, engine_device):
    model_dir, tok_dir = mini
    inputs = frame_inputs(*make_bars(40, 6, seed=9))
    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device=engine_device)
    rng_before = torch.get_rng_state()
    a = sampler.sample(*inputs, n_paths=24, seed=11)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG was touched"
    np.testing.assert_array_equal(a, sampler.sample(*inputs, n_paths=24, seed=11))
    assert not np.allclose(a, sampler.sample(*inputs, n_paths=24, seed=12))
    assert len({p.tobytes() for p in a}) > 1, "paths should differ from each other"
    fresh = [sampler.sample(*inputs, n_paths=4, seed=None) for _ in range(2)]
    assert not np.array_equal(*fresh), "seed=None should draw fresh entropy"
    sampler.memory_budget = 1  # one path per chunk
    assert sampler.plan(40, 6, 1, 24) == (1, 1)
    np.testing.assert_allclose(sampler.sample(*inputs, n_paths=24, seed=11), a, rtol=1e-5)
    # a path depends on its index and the seed only: the first 10 of 24 paths are the 10 paths of n_paths=10
    sampler.memory_budget = None
    np.testing.assert_allclose(sampler.sample(*inputs, n_paths=10, seed=11), a[:10], rtol=1e-5)


def test_step_logits_match_reference(mini):
    """The distributions we sample from are the reference's: s1 and s2 logits at the first two steps
    (the second through our KV cache, the reference recomputing its whole window)."""
    from model import Kronos, KronosTokenizer

    from kronos.inputs import normalise

    model_dir, tok_dir = mini
    ref_model, ref_tok = Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval()
    ours = KronosPathSampler.from_pretrained(model_dir, tok_dir, device="cpu")
    values, x_stamp, y_stamp = frame_inputs(*make_bars(32, 2, seed=3))
    x = torch.from_numpy(normalise(values[None])[0].astype(np.float32))
    stamp = torch.from_numpy(np.concatenate([x_stamp, y_stamp]))[None]
    net = ours.model
    with torch.inference_mode():
        s1, s2 = ref_tok.encode(x, half=True)
        ref_l1, ref_h = ref_model.decode_s1(s1, s2, stamp[:, :32].float())
        ours_s1, ours_s2 = ours.tokenizer.encode(x)
        assert torch.equal(ours_s1, s1) and torch.equal(ours_s2, s2)
        h = net.prefill(ours_s1, ours_s2, stamp[:, :32])
        torch.testing.assert_close(net.s1_logits(h), ref_l1[:, -1], rtol=1e-4, atol=1e-4)
        net.setup_paths(1, 2)
        candidates = torch.topk(ref_l1[0, -1], 3).indices
        for c in candidates:
            ref_l2 = ref_model.decode_s2(ref_h, c.view(1, 1))[:, -1]
            torch.testing.assert_close(net.s2_logits(c.view(1), h), ref_l2, rtol=1e-4, atol=1e-4)
        # second step: feed (s1, s2) = (best, best) and compare again
        n1 = candidates[:1].view(1, 1)
        n2 = ref_model.decode_s2(ref_h, n1)[:, -1].argmax(-1, keepdim=True)
        ref_l1b, ref_hb = ref_model.decode_s1(torch.cat([s1, n1], 1), torch.cat([s2, n2], 1), stamp[:, :33].float())
        h = net.step(n1[:, 0], n2[:, 0], stamp[:, 32])
        torch.testing.assert_close(net.s1_logits(h), ref_l1b[:, -1], rtol=1e-4, atol=1e-4)
        c2 = torch.topk(ref_l1b[0, -1], 1).indices
        torch.testing.assert_close(net.s2_logits(c2, h), ref_model.decode_s2(ref_hb, c2.view(1, 1))[:, -1],
                                   rtol=1e-4, atol=1e-4)
        net.clear_caches()
