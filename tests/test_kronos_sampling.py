"""Sampling semantics: top-k/top-p filtering equals the reference, draws follow the filtered distribution,
sampled paths match the reference predictor statistically, and seeds/chunking behave as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos import KronosPathSampler
from kronos.sampling import filter_logits, sample_tokens
from kronos_checkpoints import write_checkpoint_pair
from test_kronos_exact import make_bars

ALL = ("open", "high", "low", "close", "volume", "amount")


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


def test_sample_tokens_follows_filtered_distribution():
    from model.kronos import top_k_top_p_filtering

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1024, generator=gen) * 3
    for temperature, top_k, top_p in [(1.0, 0, 0.9), (0.7, 0, 1.0), (1.3, 20, 1.0)]:
        scaled = logits.clone() / temperature
        probs = torch.softmax(top_k_top_p_filtering(scaled, top_k, top_p) if top_k or top_p < 1 else scaled, -1)[0]
        n = 40_000
        draws = sample_tokens(logits.expand(n, -1), torch.rand(n, generator=gen), temperature, top_k, top_p)
        freq = torch.bincount(draws, minlength=1024).double() / n
        assert (freq[probs == 0] == 0).all(), "a filtered-out token was drawn"
        se = (probs.double() * (1 - probs.double()) / n).sqrt()
        assert ((freq - probs.double()).abs() <= 5 * se + 5 / n).all()  # 5/n: Poisson slack for rare tokens


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("kronos_sampling"), "mini", seed=2)


def test_path_distribution_matches_reference(mini):
    """Mean of many of our paths vs the reference's average over its own paths, at T=1, top_p=0.9."""
    from model import Kronos, KronosPredictor, KronosTokenizer

    model_dir, tok_dir = mini
    horizon, n_ref, n_ours = 4, 400, 3000
    df, x_ts, y_ts = make_bars(32, horizon, seed=5, columns=ALL)
    ref = KronosPredictor(Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval(),
                          device="cpu", max_context=2048)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        ref_mean = ref.predict(df, x_ts, y_ts, pred_len=horizon, T=1.0, top_k=0, top_p=0.9, sample_count=n_ref,
                               verbose=False).to_numpy()
    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device="cpu")
    paths = sampler.sample(df, x_ts, y_ts, n_paths=n_ours, temperature=1.0, top_k=0, top_p=0.9, seed=7)
    mean, std = paths.mean(0), paths.std(0)
    assert (std > 0).all(), "paths do not vary: the test would have no power"
    z = (mean - ref_mean) / (std * np.sqrt(1 / n_ours + 1 / n_ref))
    assert np.abs(z).max() < 5, f"max |z| {np.abs(z).max():.2f}"


def test_seed_chunking_and_global_rng(mini):
    model_dir, tok_dir = mini
    df, x_ts, y_ts = make_bars(40, 6, seed=9, columns=ALL)
    sampler = KronosPathSampler.from_pretrained(model_dir, tok_dir, device="cpu")
    rng_before = torch.get_rng_state()
    a = sampler.sample(df, x_ts, y_ts, n_paths=24, seed=11)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG was touched"
    b = sampler.sample(df, x_ts, y_ts, n_paths=24, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, sampler.sample(df, x_ts, y_ts, n_paths=24, seed=12))
    assert len({p.tobytes() for p in a}) > 1, "paths should differ from each other"
    sampler.memory_budget = 1  # one path per chunk
    assert sampler.plan(40, 6, 1, 24) == (1, 1)
    np.testing.assert_allclose(sampler.sample(df, x_ts, y_ts, n_paths=24, seed=11), a, rtol=1e-5)
    # a path depends on its index and the seed only: the first 10 of 24 paths are the 10 paths of n_paths=10
    sampler.memory_budget = None
    np.testing.assert_allclose(sampler.sample(df, x_ts, y_ts, n_paths=10, seed=11), a[:10], rtol=1e-5)


def test_step_logits_match_reference(mini):
    """The distributions we sample from are the reference's: s1 and s2 logits at the first two steps
    (the second through our KV cache, the reference recomputing its whole window)."""
    from model import Kronos, KronosTokenizer

    from kronos.model import new_path_cache
    from kronos.sampler import frame_to_arrays, prefill

    model_dir, tok_dir = mini
    ref_model, ref_tok = Kronos.from_pretrained(model_dir).eval(), KronosTokenizer.from_pretrained(tok_dir).eval()
    ours = KronosPathSampler.from_pretrained(model_dir, tok_dir, device="cpu")
    df, x_ts, y_ts = make_bars(32, 2, seed=3, columns=ALL)
    values, x_stamp, y_stamp = frame_to_arrays(df, x_ts, y_ts)
    x = torch.from_numpy(np.clip((values - values.mean(0)) / (values.std(0) + 1e-5), -5, 5))[None]
    stamp = torch.from_numpy(np.concatenate([x_stamp, y_stamp]))[None]
    with torch.inference_mode():
        s1, s2 = ref_tok.encode(x, half=True)
        ref_l1, ref_h = ref_model.decode_s1(s1, s2, stamp[:, :32].float())
        prefix = prefill(ours.predictor, ours.tokenizer, x, stamp[:, :32])
        torch.testing.assert_close(prefix.logits_s1, ref_l1[:, -1], rtol=1e-4, atol=1e-4)
        candidates = torch.topk(ref_l1[0, -1], 3).indices
        for c in candidates:
            ref_l2 = ref_model.decode_s2(ref_h, c.view(1, 1))[:, -1]
            ours_l2 = ours.predictor.s2_logits(c.view(1), prefix.h_last, prefix.dep, None, None)
            torch.testing.assert_close(ours_l2, ref_l2, rtol=1e-4, atol=1e-4)
        # second step: feed (s1, s2) = (best, best) and compare again
        n1, n2 = candidates[:1].view(1, 1), ref_model.decode_s2(ref_h, candidates[:1].view(1, 1))[:, -1].argmax(-1, keepdim=True)
        ref_l1b, ref_hb = ref_model.decode_s1(torch.cat([s1, n1], 1), torch.cat([s2, n2], 1), stamp[:, :33].float())
        cache = new_path_cache(prefix.blocks, 1, 2)
        h = ours.predictor.forward_cached(n1, n2, stamp[:, 32:33], prefix.blocks, cache, 0, ours.predictor.rope(34, x.device))
        torch.testing.assert_close(ours.predictor.head.proj_s1(h[:, 0]), ref_l1b[:, -1], rtol=1e-4, atol=1e-4)
        dk, dv = (t.transpose(1, 2)[:, :, None] for t in ours.predictor.dep_layer.keys_values(h))  # [O, h, n, 1, e]
        c2 = torch.topk(ref_l1b[0, -1], 1).indices
        ours_l2 = ours.predictor.s2_logits(c2, h[:, 0], prefix.dep, dk, dv)
        torch.testing.assert_close(ours_l2, ref_model.decode_s2(ref_hb, c2.view(1, 1))[:, -1], rtol=1e-4, atol=1e-4)
