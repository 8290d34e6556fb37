"""The Kronos tokenizer and predictor. Each network owns its KV caches (in its attention modules):

    h = model.prefill(s1, s2, stamp)      # contexts [O, P], cached once per origin
    model.setup_paths(n_paths, horizon)   # per-path cache slots
    logits = model.s1_logits(h); ...; logits = model.s2_logits(s1, h); h = model.step(s1, s2, stamp)

Module and attribute names follow the published checkpoints so their state dicts load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DEP_HEADS, PredictorConfig, TokenizerConfig
from .layers import (Attention, Embedding, KVCache, Linear, RMSNorm, Stack, TransformerBlock, apply_rope, caches,
                     clear_caches, dropout, rope_tables, to_path_layout)


class KronosTokenizer(nn.Module):
    """Causal encoder to sign bits (tokens s1, s2) and causal decoder back to the 6 input columns."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        d, bits = cfg.d_model, cfg.s1_bits + cfg.s2_bits
        self.embed = Linear(cfg.d_in, d)
        self.head = Linear(d, cfg.d_in)
        self.encoder = Stack(TransformerBlock(d, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_enc_layers - 1))
        self.decoder = Stack(TransformerBlock(d, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_dec_layers - 1))
        self.quant_embed = Linear(d, bits)
        self.post_quant_embed_pre = Linear(cfg.s1_bits, d)  # training-only, kept for the checkpoint
        self.post_quant_embed = Linear(bits, d)

    def rope(self, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return rope_tables(self.cfg.d_model // self.cfg.n_heads, n_pos, device)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [O, P, d_in] -> (s1, s2) [O, P]: sign bits of the code, least-significant bit first."""
        cos, sin = self.rope(x.shape[1], x.device)
        z = self.encoder.prefix(self.embed(x), cos, sin, keep=False)
        bits = (self.quant_embed(z) > 0).long()  # L2 normalisation does not change signs
        shifts = torch.arange(max(self.cfg.s1_bits, self.cfg.s2_bits), device=x.device)
        n1 = self.cfg.s1_bits
        s1 = (bits[..., :n1] << shifts[:n1]).sum(-1)
        return s1, (bits[..., n1:] << shifts[: self.cfg.s2_bits]).sum(-1)

    def code(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Token indices -> the +-1/sqrt(bits) code vector fed to the decoder."""
        def unpack(idx: Tensor, n_bits: int) -> Tensor:
            return (idx.unsqueeze(-1) >> torch.arange(n_bits, device=idx.device)) & 1

        bits = torch.cat([unpack(s1, self.cfg.s1_bits), unpack(s2, self.cfg.s2_bits)], -1).float()
        return (bits * 2 - 1) / math.sqrt(bits.shape[-1])

    def decode(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Uncached decode of whole token sequences [B, T] -> [B, T, d_in] (tests compare the cache with it)."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        return self.head(self.decoder.prefix(self.post_quant_embed(self.code(s1, s2)), cos, sin, keep=False))

    def latent(self, x: Tensor) -> Tensor:
        """x [B, T, d_in] -> the L2-normalised code before its signs are taken [B, T, bits] (training)."""
        cos, sin = self.rope(x.shape[1], x.device)
        return F.normalize(self.quant_embed(self.encoder.prefix(self.embed(x), cos, sin, keep=False)), dim=-1)

    def decode_code(self, code: Tensor, s1_only: bool = False) -> Tensor:
        """Uncached decode of code vectors [B, T, bits] (or of their s1 bits alone through the training-only
        post_quant_embed_pre) -> [B, T, d_in] (training: the tokenizer's reconstruction losses)."""
        cos, sin = self.rope(code.shape[1], code.device)
        z = self.post_quant_embed_pre(code[..., : self.cfg.s1_bits]) if s1_only else self.post_quant_embed(code)
        return self.head(self.decoder.prefix(z, cos, sin, keep=False))

    def decode_prefix(self, s1: Tensor, s2: Tensor) -> None:
        """Cache the decoder keys/values of the context tokens [O, P], shared by every path of that origin."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        self.decoder.prefix(self.post_quant_embed(self.code(s1, s2)), cos, sin, keep=True)

    def decode_paths(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Decode each path's new tokens [B, T] after its origin's cached context -> [B, T, d_in]."""
        cache = caches(self.decoder)
        p, t = cache[0].pk.shape[2], s1.shape[1]
        for c in cache:
            c.start_paths(s1.shape[0] // c.pk.shape[0], t)
        cos, sin = self.rope(p + t, s1.device)
        return self.head(self.decoder.paths(self.post_quant_embed(self.code(s1, s2)), cos[p:], sin[p:]))


class HierarchicalEmbedding(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.scale = math.sqrt(cfg.d_model)
        self.emb_s1 = Embedding(2**cfg.s1_bits, cfg.d_model)
        self.emb_s2 = Embedding(2**cfg.s2_bits, cfg.d_model)
        self.fusion_proj = Linear(2 * cfg.d_model, cfg.d_model)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        return self.fusion_proj(torch.cat([self.emb_s1(s1) * self.scale, self.emb_s2(s2) * self.scale], -1))


class TemporalEmbedding(nn.Module):
    """Sum of learned embeddings of (minute, hour, weekday, day, month) = stamp[..., 0..4]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.minute_embed = Embedding(60, d_model)
        self.hour_embed = Embedding(24, d_model)
        self.weekday_embed = Embedding(7, d_model)
        self.day_embed = Embedding(32, d_model)
        self.month_embed = Embedding(13, d_model)

    def forward(self, stamp: Tensor) -> Tensor:
        minute, hour, weekday, day, month = stamp.long().unbind(-1)
        # same summation order as upstream, so fp32 results agree bit for bit
        return (self.hour_embed(hour) + self.weekday_embed(weekday) + self.day_embed(day)
                + self.month_embed(month) + self.minute_embed(minute))


class DependencyAwareLayer(nn.Module):
    """s2 conditioning: one query (emb_s1 of the sampled s1) attends to every hidden state of the window.

    Upstream sizes its rotary tables from the query length (1), so the rotation is the identity, and the
    layer is non-causal in eval mode; we therefore apply no rotary and no mask here.
    """

    def __init__(self, d_model: int, n_heads: int = DEP_HEADS):
        super().__init__()
        self.cross_attn = Attention(d_model, n_heads, fused_first=1)  # k|v fused; q is applied to emb_s1
        self.norm = RMSNorm(d_model)

    def keys_values(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden [B, T, d] -> keys/values [B, T, h, e]."""
        kv = self.cross_attn.project(hidden)
        return kv[:, :, 0], kv[:, :, 1]

    def cache_prefix(self, hidden: Tensor) -> None:
        k, v = (t.transpose(1, 2).contiguous() for t in self.keys_values(hidden))
        self.cross_attn.cache = KVCache(k, v)

    def forward(self, s1_emb: Tensor, h: Tensor) -> Tensor:
        """s1_emb, h [B, d] -> RMSNorm(h + attention over the cached window) [B, d]."""
        a = self.cross_attn
        assert a.cache is not None, "cache_prefix() first"
        q = a.q_proj(s1_emb).view(-1, 1, a.n_heads, a.head_dim) * a.head_dim**-0.5  # [B, 1, h, e]
        y = a.merge(a.cache.attend(to_path_layout(q, a.cache.pk.shape[0])))[:, 0]
        return self.norm(h + y)

    def teacher_forced(self, s1_emb: Tensor, h: Tensor) -> Tensor:
        """Training form, as upstream trains the layer: queries s1_emb [B, T, d] (each position's true next s1),
        keys/values h [B, T, d], both rotated at positions 0..T-1, causal -> RMSNorm(h + attention) [B, T, d]."""
        a = self.cross_attn
        b, t, d = h.shape
        cos, sin = rope_tables(a.head_dim, t, h.device)
        q = apply_rope(a.q_proj(s1_emb).view(b, t, a.n_heads, a.head_dim), cos, sin)
        kv = a.project(h)  # [B, T, 2, h, e]
        k, v = apply_rope(kv[:, :, 0], cos, sin), kv[:, :, 1]
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.norm(h + a.out_proj(y.transpose(1, 2).reshape(b, t, d)))


class DualHead(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.proj_s1 = Linear(cfg.d_model, 2**cfg.s1_bits)
        self.proj_s2 = Linear(cfg.d_model, 2**cfg.s2_bits)


class Kronos(nn.Module):
    """The predictor: next (s1, s2) token pair from the token pairs and time stamps so far."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = HierarchicalEmbedding(cfg)
        self.time_emb = TemporalEmbedding(cfg.d_model)
        self.transformer = Stack(TransformerBlock(cfg.d_model, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.dep_layer = DependencyAwareLayer(cfg.d_model)
        self.head = DualHead(cfg)
        self.prefix_len = 0
        self.rope_new: tuple[Tensor, Tensor] | None = None  # cos/sin of the paths' new positions
        self.token_dropout = 0.0  # on the input embeddings, while training (upstream's token_dropout_p)

    def rope(self, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return rope_tables(self.cfg.d_model // self.cfg.n_heads, n_pos, device)

    def embed(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        return self.embedding(s1, s2) + self.time_emb(stamp)

    def forward(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        """Uncached causal pass over [B, T] tokens -> final-normed hidden states [B, T, d] (tests, training)."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        x = dropout(self.embed(s1, s2, stamp), self.token_dropout, self.training)
        return self.norm(self.transformer.prefix(x, cos, sin, keep=False))

    def teacher_forced(self, s1: Tensor, s2: Tensor, stamp: Tensor, s1_next: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass over whole sequences [B, T] (no cache): s1 logits of each position, and s2 logits
        conditioned on the true next s1 (s1_next [B, T]); both [B, T, vocab]."""
        h = self.forward(s1, s2, stamp)
        s2_in = self.dep_layer.teacher_forced(self.embedding.emb_s1(s1_next), h)
        return self.head.proj_s1(h), self.head.proj_s2(s2_in)

    def prefill(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        """Run the contexts [O, P] once, caching every layer's keys/values; -> last hidden state [O, d]."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        h = self.norm(self.transformer.prefix(self.embed(s1, s2, stamp), cos, sin, keep=True))
        self.dep_layer.cache_prefix(h)
        self.prefix_len = s1.shape[1]
        return h[:, -1]

    def setup_paths(self, n_paths: int, max_new: int, static: bool = False) -> None:
        """Empty per-path cache slots for n_paths paths per origin and up to max_new new tokens each (static:
        fixed shapes and device-side positions for every step, see KVCache)."""
        for c in caches(self):
            c.start_paths(n_paths, max_new, static)
        p = self.prefix_len
        cos, sin = self.rope(p + max_new, self.head.proj_s1.weight.device)
        self.rope_new = (cos[p:], sin[p:])

    def s1_logits(self, h: Tensor) -> Tensor:
        return self.head.proj_s1(h)

    def s2_logits(self, s1: Tensor, h: Tensor) -> Tensor:
        """Logits of s2 given the sampled s1 [B] and the hidden state h [B, d] that produced s1."""
        return self.head.proj_s2(self.dep_layer(self.embedding.emb_s1(s1), h))

    def step(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        """Feed each path's next token pair s1, s2 [B] with its bar's stamp [B, 5] -> its hidden state [B, d]."""
        assert self.rope_new is not None, "setup_paths() first"
        i = self.dep_layer.cross_attn.cache.position()  # type: ignore[union-attr]
        if isinstance(i, int):
            cos, sin = (r[i : i + 1] for r in self.rope_new)
        else:  # static caches: the position stays on the device
            cos, sin = (r.index_select(0, i) for r in self.rope_new)
        x = self.embed(s1[:, None], s2[:, None], stamp[:, None])
        h = self.norm(self.transformer.paths(x, cos, sin))
        self.dep_layer.cross_attn.cache.append(*self.dep_layer.keys_values(h))  # type: ignore[union-attr]
        return h[:, 0]

    def clear_caches(self) -> None:
        clear_caches(self)
        self.rope_new = None
