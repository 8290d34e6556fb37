"""The KV-cached paths (shared prefix + per-path positions) equal a full recompute with our own modules."""
from __future__ import annotations

import torch

from kronos.config import PredictorConfig, TokenizerConfig
from kronos.model import KronosPredictor, KronosTokenizer, fuse_projections, new_path_cache

O, N, P, H = 2, 3, 11, 5  # origins, paths per origin, prefix length, new tokens


def tokens(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 1024, shape, generator=gen)


def stamps(gen: torch.Generator, *shape: int) -> torch.Tensor:
    hi = torch.tensor([60, 24, 7, 32, 13])
    return (torch.rand(*shape, 5, generator=gen) * hi).long()


def nets(fused: bool) -> tuple[KronosPredictor, KronosTokenizer]:
    torch.manual_seed(0)
    pred = KronosPredictor(PredictorConfig(10, 10, n_layers=2, d_model=64, n_heads=4, ff_dim=96)).eval()
    tok = KronosTokenizer(TokenizerConfig(6, 64, 4, 96, 3, 3, 10, 10)).eval()
    if fused:
        fuse_projections(pred), fuse_projections(tok)
    return pred, tok


@torch.inference_mode()
def check_predictor(fused: bool) -> None:
    pred, _ = nets(fused)
    gen = torch.Generator().manual_seed(1)
    s1p, s2p, stp = tokens(gen, O, P), tokens(gen, O, P), stamps(gen, O, P)
    s1n, s2n, stn = tokens(gen, O * N, H), tokens(gen, O * N, H), stamps(gen, O * N, H)
    # full recompute: each path's whole sequence, uncached
    full_h, _ = pred(torch.cat([s1p.repeat_interleave(N, 0), s1n], 1), torch.cat([s2p.repeat_interleave(N, 0), s2n], 1),
                     torch.cat([stp.repeat_interleave(N, 0), stn], 1))
    h_prefix, prefix = pred(s1p, s2p, stp)
    torch.testing.assert_close(h_prefix.repeat_interleave(N, 0), full_h[:, :P], rtol=1e-5, atol=1e-5)
    rope = pred.rope(P + H, s1n.device)
    # one token at a time, as the sampler decodes
    cache = new_path_cache(prefix, N, H)
    steps = [pred.forward_cached(s1n[:, i : i + 1], s2n[:, i : i + 1], stn[:, i : i + 1], prefix, cache, i, rope)
             for i in range(H)]
    torch.testing.assert_close(torch.cat(steps, 1), full_h[:, P:], rtol=1e-4, atol=1e-4)
    # all new tokens in one call (causal among themselves)
    block = pred.forward_cached(s1n, s2n, stn, prefix, new_path_cache(prefix, N, H), 0, rope)
    torch.testing.assert_close(block, full_h[:, P:], rtol=1e-4, atol=1e-4)

    # dependency layer: shared prefix K/V + per-path K/V equals attending over the path's whole window
    dep = pred.dep_layer
    pk, pv = (t.transpose(1, 2).contiguous() for t in dep.keys_values(h_prefix))
    k_new, v_new = dep.keys_values(full_h[:, P : P + H - 1])
    k_new = k_new.reshape(O, N, H - 1, *k_new.shape[2:]).permute(0, 3, 1, 2, 4)
    v_new = v_new.reshape(O, N, H - 1, *v_new.shape[2:]).permute(0, 3, 1, 2, 4)
    s1_query = tokens(gen, O * N)
    cached = pred.s2_logits(s1_query, full_h[:, P + H - 2], (pk, pv), k_new, v_new)
    window = full_h[:, : P + H - 1]  # each path on its own, as one "origin" with no per-path part
    wk, wv = (t.transpose(1, 2).contiguous() for t in dep.keys_values(window))
    expected = torch.stack([pred.s2_logits(s1_query[b : b + 1], window[b : b + 1, -1], (wk[b : b + 1], wv[b : b + 1]),
                                           None, None)[0] for b in range(O * N)])
    torch.testing.assert_close(cached, expected, rtol=1e-4, atol=1e-4)


def test_predictor_cache_equals_full_recompute():
    check_predictor(fused=True)


def test_predictor_cache_unfused_projections():
    check_predictor(fused=False)


@torch.inference_mode()
def test_tokenizer_decoder_cache_equals_full_decode():
    _, tok = nets(True)
    gen = torch.Generator().manual_seed(2)
    s1p, s2p = tokens(gen, O, P), tokens(gen, O, P)
    s1n, s2n = tokens(gen, O * N, H), tokens(gen, O * N, H)
    full = tok.decode(torch.cat([s1p.repeat_interleave(N, 0), s1n], 1), torch.cat([s2p.repeat_interleave(N, 0), s2n], 1))
    cached = tok.decode_new(s1n, s2n, tok.decode_prefix(s1p, s2p))
    torch.testing.assert_close(cached, full[:, P:], rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_tokenizer_roundtrip_bits():
    _, tok = nets(True)
    s1, s2 = tokens(torch.Generator().manual_seed(3), 2, 7), tokens(torch.Generator().manual_seed(4), 2, 7)
    code = tok.code(s1, s2)
    weights = 2 ** torch.arange(10)
    assert torch.equal(((code[..., :10] > 0).long() * weights).sum(-1), s1)
    assert torch.equal(((code[..., 10:] > 0).long() * weights).sum(-1), s2)
    torch.testing.assert_close(code.abs(), torch.full_like(code, 20 ** -0.5))
