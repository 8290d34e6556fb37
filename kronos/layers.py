"""Building blocks shared by the tokenizer and the predictor, with a KV cache whose prefix is shared by every path.

Module and attribute names follow the published checkpoints so their state dicts load unchanged.
Cache layouts:
  prefix keys/values   [O, h, P, e]      one context per origin O, computed once
  per-path keys/values [O, h, n, S, e]   n paths per origin, S new positions each
Paths are origin-major: batch row b belongs to origin b // n.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias through oneDNN (the kernel torch's CPU inference passes use), with a plain weight."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool) -> Tensor:
    return onednn_linear(x, weight, bias) if onednn else F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters) that runs through oneDNN once use_onednn() has switched it.

    Why: MKL's sgemm, torch's default for float32 on CPU, does not use AVX-512 on every CPU (AMD EPYC here);
    oneDNN does, and runs the same float32 matmuls about twice as fast there.
    """

    onednn = False

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:  # built on the meta device to be loaded: nothing to initialise
            super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.onednn)


class Embedding(nn.Embedding):
    """nn.Embedding that skips initialisation on the meta device (torch's init there imports torch._dynamo: ~1 s)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


def fuse_rows(parent: nn.Module, linears: list[Linear], weight_name: str, bias_name: str | None) -> None:
    """Concatenate the linears' weights (and biases) into one buffer of parent and make the linears views of it.

    One matmul then serves all of them; the views keep state_dict() and memory as they were.
    """
    for name, attr in ((weight_name, "weight"), (bias_name, "bias")):
        if name is None:
            continue
        fused = torch.cat([getattr(lin, attr).detach() for lin in linears])
        parent.register_buffer(name, fused, persistent=False)
        start = 0
        for lin in linears:
            rows = getattr(lin, attr).shape[0]
            setattr(lin, attr, nn.Parameter(fused[start : start + rows], requires_grad=False))
            start += rows


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout only while training with p > 0: inference runs exactly the ops it ran before dropout existed."""
    return F.dropout(x, p, True) if training and p > 0 else x


def joined(linears: list[Linear], attr: str) -> Tensor:
    """The linears' weights (or biases) concatenated per call: differentiable, for training the unfused network."""
    return torch.cat([getattr(lin, attr) for lin in linears])


def unfused(module: nn.Module) -> RuntimeError:
    return RuntimeError(f"{type(module).__name__} projections are not fused: load networks through "
                        "kronos.loading (or call fuse_projections) before running them")


class FeedForward(nn.Module):
    """SwiGLU without biases: w2(silu(w1 x) * w3 x), with w1 and w3 fused into one matmul."""

    def __init__(self, d_model: int, ff_dim: int):
        super().__init__()
        self.w1 = Linear(d_model, ff_dim, bias=False)
        self.w3 = Linear(d_model, ff_dim, bias=False)
        self.w2 = Linear(ff_dim, d_model, bias=False)
        self.register_buffer("w13", None, persistent=False)  # set by fuse()
        self.onednn = False
        self.dropout = 0.0  # on the output, while training (upstream's ffn_dropout_p)
        self.trainable = False  # set by make_trainable(): run unfused, each projection its own parameter

    def fuse(self) -> None:
        fuse_rows(self, [self.w1, self.w3], "w13", None)

    def forward(self, x: Tensor) -> Tensor:
        w13 = self.w13
        if w13 is None:
            if not self.trainable:
                raise unfused(self)
            w13 = joined([self.w1, self.w3], "weight")  # training: w1 and w3 stay separate parameters
        gate, up = linear(x, w13, None, self.onednn).chunk(2, dim=-1)
        return dropout(self.w2(F.silu(gate).mul_(up)), self.dropout, self.training)


def rope_tables(head_dim: int, n_pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin [n_pos, head_dim] for absolute positions 0..n_pos-1 ("rotate half" layout)."""
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
    """[B, T, h, e] -> [O, h, n, T, e] (a view)."""
    b, t, h, e = x.shape
    return x.view(n_origins, b // n_origins, t, h, e).permute(0, 3, 1, 2, 4)


CACHE_BUCKET = 32  # per-path cache positions are allocated in multiples of this (see KVCache.start_paths)


class KVCache:
    """One attention layer's keys/values: the context (prefix) once per origin, and each path's new positions.

    Two ways to fill the per-path slots. Dynamic (default): `length` is a Python int and attention reads only the
    filled slots. Static (start_paths(static=True)): the count of filled slots lives on the device (`filled`),
    writes land at that count and attention reads every slot with the unfilled ones masked, so each decode step
    has the same shapes and no host-side index, which is what a CUDA graph needs (kronos.graphs).
    """

    def __init__(self, k: Tensor, v: Tensor):
        self.pk, self.pv = k, v  # [O, h, P, e]
        self.k: Tensor | None = None  # [O, h, n, S_max, e]
        self.v: Tensor | None = None
        self.length = 0  # per-path positions filled so far (dynamic mode)
        self.filled: Tensor | None = None  # the same count as a [1] device tensor (static mode)
        self.slot_ids: Tensor | None = None  # [S_max] 0..S_max-1 (static mode)

    def start_paths(self, n_paths: int, max_new: int, static: bool = False) -> None:
        o, h, _, e = self.pk.shape
        # Slots for a whole bucket of positions: every horizon of a bucket allocates the same blocks, so a session
        # whose horizon shrinks toward the close reuses the freed blocks instead of fragmenting the heap with new
        # sizes. Only the filled positions are ever read (or weigh anything), so results do not depend on the bucket.
        slots = -(-max_new // CACHE_BUCKET) * CACHE_BUCKET
        # static mode multiplies unfilled slots by a zero weight: they must hold numbers, not stale NaN bits
        alloc = self.pk.new_zeros if static else self.pk.new_empty
        self.k, self.v = alloc(o, h, n_paths, slots, e), alloc(o, h, n_paths, slots, e)
        self.length = 0
        self.filled = torch.zeros(1, dtype=torch.long, device=self.pk.device) if static else None
        self.slot_ids = torch.arange(slots, device=self.pk.device) if static else None

    def append(self, k: Tensor, v: Tensor) -> None:
        """k/v [B, T, h, e] of the paths' next T positions (T = 1 in static mode)."""
        assert self.k is not None and self.v is not None, "start_paths() first"
        o = self.pk.shape[0]
        if self.filled is not None:
            self.k.index_copy_(3, self.filled, to_path_layout(k, o))
            self.v.index_copy_(3, self.filled, to_path_layout(v, o))
            self.filled.add_(1)
            return
        end = self.length + k.shape[1]
        self.k[:, :, :, self.length : end] = to_path_layout(k, o)
        self.v[:, :, :, self.length : end] = to_path_layout(v, o)
        self.length = end

    def attend(self, q: Tensor) -> Tensor:
        """Softmax attention of q [O, h, n, T, e] (already scaled; the last T positions of the cache are the
        queries' own, causal among themselves) over the prefix plus each path's positions -> [O, h, n, T, e].

        The n*T queries of an origin meet its prefix in one matmul, so the prefix is read, never repeated per path.
        """
        o, h, n, t, e = q.shape
        p = self.pk.shape[2]
        static = self.filled is not None
        s = self.k.shape[3] if static else self.length  # type: ignore[union-attr]
        scores = q.reshape(o, h, n * t, e) @ self.pk.transpose(-1, -2)  # [O, h, nT, P]
        if s:
            k, v = self.k[:, :, :, :s], self.v[:, :, :, :s]  # type: ignore[index]
            own = q @ k.transpose(-1, -2)  # [O, h, n, T, S]
            if static:  # one query per path (t == 1): the filled slots only
                assert t == 1, "static caches take one position per step"
                own = own.masked_fill(self.slot_ids >= self.filled, float("-inf"))  # type: ignore[operator]
            elif t > 1:  # query i sits at new position s - t + i (bottom-right aligned causal mask)
                allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
                own = own.masked_fill(~allowed, float("-inf"))
            scores = torch.cat([scores, own.view(o, h, n * t, s)], dim=-1)
        weights = scores.softmax(-1, dtype=torch.float32).to(self.pv.dtype)
        out = weights[..., :p] @ self.pv  # [O, h, nT, e]
        if s:
            out += (weights[..., p:].view(o, h, n, t, s) @ v).view(o, h, n * t, e)
        return out.view(o, h, n, t, e)

    def position(self) -> Tensor | int:
        """Index of the next per-path position: an int, or a [1] device tensor in static mode."""
        return self.filled if self.filled is not None else self.length


class Attention(nn.Module):
    """Multi-head attention with biased projections (q/k/v fused into one matmul once weights are loaded)."""

    def __init__(self, d_model: int, n_heads: int, fused_first: int = 0):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        # fused rows start at q (self-attention) or at k (the dependency layer, whose query has another input)
        self.fused_first = fused_first
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)
        self.register_buffer("qkv_weight", None, persistent=False)  # set by fuse()
        self.register_buffer("qkv_bias", None, persistent=False)
        self.onednn = False
        self.cache: KVCache | None = None
        self.attn_dropout = 0.0  # on the attention weights, while training (upstream's attn_dropout_p)
        self.resid_dropout = 0.0  # on the output projection, while training (upstream's resid_dropout_p)
        self.trainable = False  # set by make_trainable(): run unfused, each projection its own parameter

    def fuse(self) -> None:
        """One matmul for q, k and v, or for k and v only."""
        fuse_rows(self, [self.q_proj, self.k_proj, self.v_proj][self.fused_first :], "qkv_weight", "qkv_bias")

    def project(self, x: Tensor) -> Tensor:
        """The fused projections of x, split into heads: [..., 3 (q, k, v) or 2 (k, v), h, e]."""
        weight, bias = self.qkv_weight, self.qkv_bias
        if weight is None:
            if not self.trainable:
                raise unfused(self)
            # training: q/k/v stay separate parameters; joined per call so gradients reach each of them
            lins = [self.q_proj, self.k_proj, self.v_proj][self.fused_first :]
            weight, bias = joined(lins, "weight"), joined(lins, "bias")
        y = linear(x, weight, bias, self.onednn)
        return y.view(*x.shape[:-1], 3 - self.fused_first, self.n_heads, self.head_dim)

    def merge(self, y: Tensor) -> Tensor:
        """[O, h, n, T, e] -> out_proj over [B, T, d]."""
        o, h, n, t, e = y.shape
        return self.out_proj(y.permute(0, 2, 3, 1, 4).reshape(o * n, t, h * e))

    def rotated_qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y = self.project(x)  # [B, T, 3, h, e]
        qk = apply_rope(y[:, :, :2], cos, sin)  # q and k rotated together
        return qk[:, :, 0], qk[:, :, 1], y[:, :, 2]

    def forward_prefix(self, x: Tensor, cos: Tensor, sin: Tensor, keep: bool) -> Tensor:
        """Causal attention over whole sequences x [O, T, d]; keep=True caches their keys/values as the prefix."""
        q, k, v = (t.transpose(1, 2) for t in self.rotated_qkv(x, cos, sin))
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # T_q == T_k: alignment moot
        if keep:
            self.cache = KVCache(k.contiguous(), v.contiguous())
        return dropout(self.out_proj(y.transpose(1, 2).reshape(x.shape)), self.resid_dropout, self.training)

    def forward_paths(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Each path's next T tokens x [B, T, d] after the cached prefix and the path's earlier tokens."""
        assert self.cache is not None, "forward_prefix(keep=True) first"
        q, k, v = self.rotated_qkv(x, cos, sin)
        self.cache.append(k, v)
        q = to_path_layout(q * self.head_dim**-0.5, self.cache.pk.shape[0])
        return self.merge(self.cache.attend(q))


class TransformerBlock(nn.Module):
    """Pre-norm: x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)

    def forward_prefix(self, x: Tensor, cos: Tensor, sin: Tensor, keep: bool) -> Tensor:
        x = x + self.self_attn.forward_prefix(self.norm1(x), cos, sin, keep)
        return x + self.ffn(self.norm2(x))

    def forward_paths(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn.forward_paths(self.norm1(x), cos, sin)
        return x + self.ffn(self.norm2(x))


class Stack(nn.ModuleList):
    """Blocks run over whole contexts (optionally caching them) or over the paths' new tokens."""

    def prefix(self, x: Tensor, cos: Tensor, sin: Tensor, keep: bool) -> Tensor:
        for block in self:
            x = block.forward_prefix(x, cos, sin, keep)
        return x

    def paths(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        for block in self:
            x = block.forward_paths(x, cos, sin)
        return x


def caches(net: nn.Module) -> list[KVCache]:
    return [m.cache for m in net.modules() if isinstance(m, Attention) and m.cache is not None]


def clear_caches(net: nn.Module) -> None:
    """Drop every cached key/value of the network (frees the memory of the last batch of origins)."""
    for m in net.modules():
        if isinstance(m, Attention):
            m.cache = None


def fuse_projections(net: nn.Module) -> nn.Module:
    """Fuse q/k/v and w1/w3 of every block, once, after the weights are loaded and placed."""
    for m in net.modules():
        if isinstance(m, (Attention, FeedForward)):
            m.fuse()
    return net


def make_trainable(net: nn.Module) -> nn.Module:
    """Let an unfused network run (fine-tuning): its projections are joined per call, so gradients reach each
    Linear's own parameters. Networks loaded for inference stay fused, and unfused ones there stay an error."""
    for m in net.modules():
        if isinstance(m, (Attention, FeedForward)):
            m.trainable = True
    return net


def set_dropout(net: nn.Module, attn: float = 0.0, resid: float = 0.0, ffn: float = 0.0) -> None:
    """Dropout probabilities of every block (used only in train mode; upstream's *_dropout_p config fields)."""
    for m in net.modules():
        if isinstance(m, Attention):
            m.attn_dropout, m.resid_dropout = attn, resid
        elif isinstance(m, FeedForward):
            m.dropout = ffn


def use_onednn(net: nn.Module) -> None:
    """Run every matmul of net's linear layers through oneDNN (CPU float32, decided once at load)."""
    for m in net.modules():
        if isinstance(m, (Attention, FeedForward, Linear)):
            m.onednn = True


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's float32 linear and it agrees with F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((5, 3, 64), (48, 64), (48,)))
        return bool(torch.allclose(onednn_linear(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError):
        return False
