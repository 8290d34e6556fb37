"""Kronos tokenizer and predictor networks, with a KV cache whose prefix is shared by every path.

Module and attribute names follow the published checkpoints so their state dicts load unchanged.
Layouts used by the cache:
  prefix keys/values  [O, h, P, e]     one context per origin O, computed once
  per-path keys/values [O, h, n, S, e]  n paths per origin, S new positions each
Paths are origin-major: batch row b belongs to origin b // n.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PredictorConfig, TokenizerConfig

KV = tuple[Tensor, Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # statistics in fp32 even when the weights are bf16/fp16, as upstream does
        return F.rms_norm(x.float(), self.weight.shape, eps=self.eps).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU without biases: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)

    def fuse(self) -> None:
        """One matmul for w1 and w3 (non-persistent buffer: checkpoints are unaffected). Call after loading."""
        self.register_buffer("w13", torch.cat([self.w1.weight, self.w3.weight]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        w13 = getattr(self, "w13", None)
        if w13 is None:
            w13 = torch.cat([self.w1.weight, self.w3.weight])
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def rope_tables(head_dim: int, n_pos: int, device: torch.device) -> KV:
    """cos/sin [n_pos, head_dim] for absolute positions 0..n_pos-1 (half-split layout)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(n_pos, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, T, ..., e]; cos/sin [T, e] for the positions of x's T tokens."""
    shape = (cos.shape[0],) + (1,) * (x.dim() - 3) + (cos.shape[1],)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.view(shape).to(x.dtype) + rotated * sin.view(shape).to(x.dtype)


def to_path_layout(x: Tensor, n_origins: int) -> Tensor:
    """[B, T, h, e] -> [O, h, n, T, e]."""
    b, t, h, e = x.shape
    return x.view(n_origins, b // n_origins, t, h, e).permute(0, 3, 1, 2, 4)


def prefix_attention(q: Tensor, prefix: KV, k: Tensor | None, v: Tensor | None) -> Tensor:
    """Softmax attention over a shared prefix plus each path's own keys, without copying the prefix.

    q [O, h, n, T, e]; prefix keys/values [O, h, P, e]; k/v [O, h, n, S, e] whose last T positions
    are the queries' own (causal among themselves). Returns [O, h, n, T, e].
    The n*T queries of an origin share one matmul against its prefix, so the prefix is read, never repeated.
    """
    o, h, n, t, e = q.shape
    pk, pv = prefix
    p = pk.shape[-2]
    scores = q.reshape(o, h, n * t, e) @ pk.transpose(-1, -2)  # [O, h, nT, P]
    s = 0 if k is None else k.shape[-2]
    if s:
        s_new = q @ k.transpose(-1, -2)  # [O, h, n, T, S]
        if t > 1:  # query i sits at new position s - t + i (bottom-right aligned causal mask)
            allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
            s_new = s_new.masked_fill(~allowed, float("-inf"))
        scores = torch.cat([scores, s_new.view(o, h, n * t, s)], dim=-1)
    weights = scores.float().mul_(e ** -0.5).softmax(-1).to(pv.dtype)
    out = weights[..., :p] @ pv  # [O, h, nT, e]
    if s:
        out += (weights[..., p:].reshape(o, h, n, t, s) @ v).view(o, h, n * t, e)
    return out.view(o, h, n, t, e)


class Attention(nn.Module):
    """Multi-head attention with biased projections; rotary and causal for self-attention."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def fuse(self) -> None:
        """One matmul for q, k and v (non-persistent buffers: checkpoints are unaffected). Call after loading."""
        ps = (self.q_proj, self.k_proj, self.v_proj)
        self.register_buffer("qkv_weight", torch.cat([p.weight for p in ps]), persistent=False)
        self.register_buffer("qkv_bias", torch.cat([p.bias for p in ps]), persistent=False)

    def project(self, x: Tensor, which: slice) -> Tensor:
        """Rows `which` of the fused q|k|v projection, split into heads: [..., n, h, e]."""
        w, b = getattr(self, "qkv_weight", None), getattr(self, "qkv_bias", None)
        if w is None:
            ps = (self.q_proj, self.k_proj, self.v_proj)
            w, b = torch.cat([p.weight for p in ps]), torch.cat([p.bias for p in ps])
        d = self.n_heads * self.head_dim
        rows = slice(which.start * d, which.stop * d)
        y = F.linear(x, w[rows], b[rows])
        return y.view(*x.shape[:-1], which.stop - which.start, self.n_heads, self.head_dim)

    def merge(self, y: Tensor) -> Tensor:
        """[O, h, n, T, e] -> out_proj over [B, T, d]."""
        o, h, n, t, e = y.shape
        return self.out_proj(y.permute(0, 2, 3, 1, 4).reshape(o * n, t, h * e))

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y = self.project(x, slice(0, 3))  # [B, T, 3, h, e]
        qk = apply_rope(y[:, :, :2], cos, sin)  # q and k rotated together
        return qk[:, :, 0], qk[:, :, 1], y[:, :, 2]

    def forward_full(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, KV]:
        """Causal attention over a whole sequence [B, T, d]; also returns its keys/values [B, h, T, e]."""
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x, cos, sin))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # T_q == T_k: alignment is moot
        return self.out_proj(y.transpose(1, 2).reshape(x.shape)), (k, v)

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, prefix: KV, cache: KV, start: int) -> Tensor:
        """New tokens x [B, T, d] at per-path slots start..start+T-1 of cache ([O, h, n, S_max, e])."""
        q, k, v = self.qkv(x, cos, sin)
        o = prefix[0].shape[0]
        kc, vc = cache
        end = start + x.shape[1]
        kc[:, :, :, start:end] = to_path_layout(k, o)
        vc[:, :, :, start:end] = to_path_layout(v, o)
        y = prefix_attention(to_path_layout(q, o), prefix, kc[:, :, :, :end], vc[:, :, :, :end])
        return self.merge(y)


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ff_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)

    def forward_full(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, KV]:
        a, kv = self.self_attn.forward_full(self.norm1(x), cos, sin)
        x = x + a
        return x + self.ffn(self.norm2(x)), kv

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, prefix: KV, cache: KV, start: int) -> Tensor:
        x = x + self.self_attn.forward_cached(self.norm1(x), cos, sin, prefix, cache, start)
        return x + self.ffn(self.norm2(x))


def fuse_projections(net: nn.Module) -> nn.Module:
    """Build the fused projection buffers of every attention and feed-forward module (after loading weights)."""
    for m in net.modules():
        if isinstance(m, (Attention, FeedForward)):
            m.fuse()
    return net


class Stack(nn.ModuleList):
    """Blocks run either over a full sequence (building a prefix cache) or over new tokens with the cache."""

    def full(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, list[KV]]:
        kvs = []
        for block in self:
            x, (k, v) = block.forward_full(x, cos, sin)
            kvs.append((k.contiguous(), v.contiguous()))  # reused every decode step
        return x, kvs

    def cached(self, x: Tensor, cos: Tensor, sin: Tensor, prefix: list[KV], cache: Tensor, start: int) -> Tensor:
        for i, block in enumerate(self):
            x = block.forward_cached(x, cos, sin, prefix[i], (cache[i, 0], cache[i, 1]), start)
        return x


def new_path_cache(prefix: list[KV], n_paths: int, n_new: int) -> Tensor:
    """Per-path K/V buffers [layers, 2, O, h, n, n_new, e], the prefix shape with a path axis."""
    o, h, _, e = prefix[0][0].shape
    return prefix[0][0].new_empty(len(prefix), 2, o, h, n_paths, n_new, e)


# ----------------------------------------------------------------------------- tokenizer


class KronosTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        d, bits = cfg.d_model, cfg.s1_bits + cfg.s2_bits
        self.embed = nn.Linear(cfg.d_in, d)
        self.head = nn.Linear(d, cfg.d_in)
        self.encoder = Stack(TransformerBlock(d, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_enc_layers - 1))
        self.decoder = Stack(TransformerBlock(d, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_dec_layers - 1))
        self.quant_embed = nn.Linear(d, bits)
        self.post_quant_embed_pre = nn.Linear(cfg.s1_bits, d)  # training-only, kept for the checkpoint
        self.post_quant_embed = nn.Linear(bits, d)

    def rope(self, n_pos: int, device: torch.device) -> KV:
        return rope_tables(self.cfg.d_model // self.cfg.n_heads, n_pos, device)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, d_in] -> (s1, s2) [B, T]: sign bits of the code, least-significant bit first."""
        cos, sin = self.rope(x.shape[1], x.device)
        z, _ = self.encoder.full(self.embed(x), cos, sin)
        bits = (self.quant_embed(z) > 0).long()  # L2 normalisation does not change signs
        n1 = self.cfg.s1_bits

        def pack(b: Tensor) -> Tensor:
            return (b << torch.arange(b.shape[-1], device=b.device)).sum(-1)

        return pack(bits[..., :n1]), pack(bits[..., n1:])

    def code(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Token indices -> the +-1/sqrt(bits) code vector fed to the decoder."""
        def unpack(idx: Tensor, n_bits: int) -> Tensor:
            return (idx.unsqueeze(-1) >> torch.arange(n_bits, device=idx.device)) & 1

        bits = torch.cat([unpack(s1, self.cfg.s1_bits), unpack(s2, self.cfg.s2_bits)], -1).float()
        return (bits * 2 - 1) / math.sqrt(bits.shape[-1])

    def decode(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Full (uncached) decode of token sequences [B, T] -> [B, T, d_in]."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        z, _ = self.decoder.full(self.post_quant_embed(self.code(s1, s2)), cos, sin)
        return self.head(z)

    def decode_prefix(self, s1: Tensor, s2: Tensor) -> list[KV]:
        """Decoder keys/values of the context tokens [O, P], shared by every path of that origin."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        _, kvs = self.decoder.full(self.post_quant_embed(self.code(s1, s2)), cos, sin)
        return kvs

    def decode_new(self, s1: Tensor, s2: Tensor, prefix: list[KV]) -> Tensor:
        """Decode each path's new tokens [B, T] after the shared prefix -> [B, T, d_in]."""
        p, t = prefix[0][0].shape[2], s1.shape[1]
        cos, sin = self.rope(p + t, s1.device)
        cache = new_path_cache(prefix, s1.shape[0] // prefix[0][0].shape[0], t)
        z = self.decoder.cached(self.post_quant_embed(self.code(s1, s2)), cos[p:], sin[p:], prefix, cache, 0)
        return self.head(z)


# ----------------------------------------------------------------------------- predictor


class HierarchicalEmbedding(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.scale = math.sqrt(cfg.d_model)
        self.emb_s1 = nn.Embedding(2**cfg.s1_bits, cfg.d_model)
        self.emb_s2 = nn.Embedding(2**cfg.s2_bits, cfg.d_model)
        self.fusion_proj = nn.Linear(2 * cfg.d_model, cfg.d_model)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        return self.fusion_proj(torch.cat([self.emb_s1(s1) * self.scale, self.emb_s2(s2) * self.scale], -1))


class TemporalEmbedding(nn.Module):
    """Sum of learned embeddings of (minute, hour, weekday, day, month) = stamp[..., 0..4]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.minute_embed = nn.Embedding(60, d_model)
        self.hour_embed = nn.Embedding(24, d_model)
        self.weekday_embed = nn.Embedding(7, d_model)
        self.day_embed = nn.Embedding(32, d_model)
        self.month_embed = nn.Embedding(13, d_model)

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

    def __init__(self, d_model: int, n_heads: int = 4):
        super().__init__()
        self.cross_attn = Attention(d_model, n_heads)
        self.norm = RMSNorm(d_model)

    def keys_values(self, hidden: Tensor) -> KV:
        """hidden [B, T, d] -> keys/values [B, T, h, e]."""
        kv = self.cross_attn.project(hidden, slice(1, 3))
        return kv[:, :, 0], kv[:, :, 1]

    def forward(self, s1_emb: Tensor, h_last: Tensor, prefix: KV, k: Tensor | None, v: Tensor | None) -> Tensor:
        """s1_emb, h_last [B, d]; prefix K/V [O, h, P, e]; per-path k/v [O, h, n, S, e] -> [B, d]."""
        a = self.cross_attn
        q = to_path_layout(a.project(s1_emb[:, None], slice(0, 1))[:, :, 0], prefix[0].shape[0])
        y = a.merge(prefix_attention(q, prefix, k, v))[:, 0]
        return self.norm(h_last + y)


class DualHead(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.proj_s1 = nn.Linear(cfg.d_model, 2**cfg.s1_bits)
        self.proj_s2 = nn.Linear(cfg.d_model, 2**cfg.s2_bits)


class KronosPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        if not cfg.learn_te:
            raise ValueError("only checkpoints with learned time embeddings (learn_te=true) are supported")
        self.cfg = cfg
        self.embedding = HierarchicalEmbedding(cfg)
        self.time_emb = TemporalEmbedding(cfg.d_model)
        self.transformer = Stack(TransformerBlock(cfg.d_model, cfg.n_heads, cfg.ff_dim) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.dep_layer = DependencyAwareLayer(cfg.d_model)
        self.head = DualHead(cfg)

    def rope(self, n_pos: int, device: torch.device) -> KV:
        return rope_tables(self.cfg.d_model // self.cfg.n_heads, n_pos, device)

    def embed(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        return self.embedding(s1, s2) + self.time_emb(stamp)

    def forward(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> tuple[Tensor, list[KV]]:
        """Full causal pass over [B, T] tokens -> final-normed hidden states [B, T, d] and per-layer K/V."""
        cos, sin = self.rope(s1.shape[1], s1.device)
        x, kvs = self.transformer.full(self.embed(s1, s2, stamp), cos, sin)
        return self.norm(x), kvs

    def forward_cached(self, s1: Tensor, s2: Tensor, stamp: Tensor, prefix: list[KV], cache: Tensor,
                       start: int, rope: KV) -> Tensor:
        """New tokens [B, T] at per-path slots start.. (absolute positions P+start..) -> hidden [B, T, d]."""
        p, t = prefix[0][0].shape[2], s1.shape[1]
        cos, sin = (r[p + start : p + start + t] for r in rope)
        return self.norm(self.transformer.cached(self.embed(s1, s2, stamp), cos, sin, prefix, cache, start))

    def s2_logits(self, s1: Tensor, h_last: Tensor, prefix: KV, k: Tensor | None, v: Tensor | None) -> Tensor:
        x2 = self.dep_layer(self.embedding.emb_s1(s1), h_last, prefix, k, v)
        return self.head.proj_s2(x2)
