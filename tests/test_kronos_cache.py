"""The KV-cached paths (shared prefix + per-path positions) equal a full recompute with our own modules."""
from __future__ import annotations

import pytest
import torch

from kronos.config import PredictorConfig, TokenizerConfig
from kronos.layers import fuse_projections, onednn_available, use_onednn
from kronos.model import Kronos, KronosTokenizer

O, N, P, H = 2, 3, 11, 5  # origins, paths per origin, prefix length, new tokens


def tokens(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 1024, shape, generator=gen)


def stamps(gen: torch.Generator, *shape: int) -> torch.Tensor:
    hi = torch.tensor([60, 24, 7, 32, 13])
    return (torch.rand(*shape, 5, generator=gen) * hi).long()


def nets(onednn: bool = False) -> tuple[Kronos, KronosTokenizer]:
    torch.manual_seed(0)
    pred = Kronos(PredictorConfig(10, 10, n_layers=2, d_model=64, n_heads=4, ff_dim=96)).eval()
    tok = KronosTokenizer(TokenizerConfig(6, 64, 4, 96, 3, 3, 10, 10)).eval()
    fuse_projections(pred), fuse_projections(tok)
    if onednn:
        use_onednn(pred), use_onednn(tok)
    return pred, tok


@pytest.mark.parametrize("onednn", [False, True])
@torch.inference_mode()
def test_predictor_cache_equals_full_recompute(onednn):
    if onednn and not onednn_available():
        pytest.skip("no oneDNN float32 linear in this torch build")
    pred, _ = nets(onednn)
    gen = torch.Generator().manual_seed(1)
    s1p, s2p, stp = tokens(gen, O, P), tokens(gen, O, P), stamps(gen, O, P)
    s1n, s2n, stn = tokens(gen, O * N, H), tokens(gen, O * N, H), stamps(gen, O * N, H)
    # full recompute: each path's whole sequence, uncached
    full_h = pred(torch.cat([s1p.repeat_interleave(N, 0), s1n], 1), torch.cat([s2p.repeat_interleave(N, 0), s2n], 1),
                  torch.cat([stp.repeat_interleave(N, 0), stn], 1))
    h_last = pred.prefill(s1p, s2p, stp)
    torch.testing.assert_close(h_last.repeat_interleave(N, 0), full_h[:, P - 1], rtol=1e-5, atol=1e-5)
    pred.setup_paths(N, H)
    h = h_last.repeat_interleave(N, 0)
    for i in range(H):
        s1q = tokens(gen, O * N)
        # s2 logits through the dependency layer's cache equal attending over the path's whole window
        window = full_h[:, : P + i]
        expected = pred.head.proj_s2(pred.dep_layer.norm(h + torch.stack([
            reference_dep_attention(pred, s1q[b], window[b]) for b in range(O * N)])))
        torch.testing.assert_close(pred.s2_logits(s1q, h), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pred.s1_logits(h), pred.head.proj_s1(full_h[:, P + i - 1]), rtol=1e-4, atol=1e-4)
        h = pred.step(s1n[:, i], s2n[:, i], stn[:, i])  # one token at a time, as the sampler decodes
        torch.testing.assert_close(h, full_h[:, P + i], rtol=1e-4, atol=1e-4)
    pred.clear_caches()


def reference_dep_attention(pred: Kronos, s1: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The dependency layer's attention written out for one path: an un-rotated query, no mask, whole window."""
    a = pred.dep_layer.cross_attn
    q = a.q_proj(pred.embedding.emb_s1(s1)).view(a.n_heads, 1, a.head_dim)
    k = a.k_proj(window).view(-1, a.n_heads, a.head_dim).transpose(0, 1)
    v = a.v_proj(window).view(-1, a.n_heads, a.head_dim).transpose(0, 1)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [h, 1, e]
    return a.out_proj(y.reshape(-1))


@torch.inference_mode()
def test_tokenizer_decoder_cache_equals_full_decode():
    _, tok = nets()
    gen = torch.Generator().manual_seed(2)
    s1p, s2p = tokens(gen, O, P), tokens(gen, O, P)
    s1n, s2n = tokens(gen, O * N, H), tokens(gen, O * N, H)
    full = tok.decode(torch.cat([s1p.repeat_interleave(N, 0), s1n], 1),
                      torch.cat([s2p.repeat_interleave(N, 0), s2n], 1))
    tok.decode_prefix(s1p, s2p)
    torch.testing.assert_close(tok.decode_paths(s1n, s2n), full[:, P:], rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_tokenizer_roundtrip_bits():
    _, tok = nets()
    s1, s2 = tokens(torch.Generator().manual_seed(3), 2, 7), tokens(torch.Generator().manual_seed(4), 2, 7)
    code = tok.code(s1, s2)
    weights = 2 ** torch.arange(10)
    assert torch.equal(((code[..., :10] > 0).long() * weights).sum(-1), s1)
    assert torch.equal(((code[..., 10:] > 0).long() * weights).sum(-1), s2)
    torch.testing.assert_close(code.abs(), torch.full_like(code, 20 ** -0.5))


def test_unfused_network_is_an_error_not_a_slow_path():
    torch.manual_seed(0)
    pred = Kronos(PredictorConfig(10, 10, n_layers=1, d_model=32, n_heads=2, ff_dim=64)).eval()
    with pytest.raises(RuntimeError, match="not fused"):
        pred(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 5))


def test_fusion_keeps_state_dict_and_memory():
    torch.manual_seed(0)
    pred = Kronos(PredictorConfig(10, 10, n_layers=1, d_model=32, n_heads=2, ff_dim=64))
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    fuse_projections(pred)
    after = pred.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    attn = pred.transformer[0].self_attn
    # q/k/v weights are views of the fused matrix: fusing did not copy the weights twice
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()


def test_per_path_slots_are_allocated_in_buckets():
    """Every horizon of a bucket gets the same cache blocks (the heap sees one size all session), and only the
    filled positions are read."""
    from kronos.layers import CACHE_BUCKET, KVCache

    prefix = torch.zeros(O, 4, P, 16)
    shapes = set()
    for horizon in range(1, CACHE_BUCKET + 1):
        cache = KVCache(prefix, prefix)
        cache.start_paths(N, horizon)
        shapes.add(tuple(cache.k.shape))
    assert shapes == {(O, 4, N, CACHE_BUCKET, 16)}
    cache = KVCache(prefix, prefix)
    cache.start_paths(N, CACHE_BUCKET + 1)
    assert cache.k.shape[3] == 2 * CACHE_BUCKET
    cache.k.fill_(float("nan")), cache.v.fill_(float("nan"))  # unfilled slots must never reach the output
    k = torch.randn(O * N, 3, 4, 16)
    cache.append(k, k)
    assert torch.isfinite(cache.attend(torch.randn(O, 4, N, 3, 16))).all()
