"""Analytic matmul FLOPs of sampling Kronos paths (multiply-add = 2 FLOPs), from the network shapes only.

What is counted: every matmul the sampler must do: linear layers and attention (QK^T and AV over the causal
triangle in a prefill, over prefix + own keys in a decode step). Not counted: embeddings, norms, softmax,
sampling. This is the work any exact implementation has to do, so FLOPs / matmul rate is a floor on time.
"""
from __future__ import annotations

from kronos.config import PredictorConfig, TokenizerConfig


def block(tokens: int, d: int, ff: int) -> float:
    """q, k, v, out projections and the SwiGLU's w1, w3, w2 for `tokens` tokens."""
    return 2.0 * tokens * (4 * d * d + 3 * d * ff)


def causal_attention(tokens: int, d: int) -> float:
    return 2.0 * 2 * d * tokens * (tokens + 1) / 2


def sampler_flops(p: PredictorConfig, t: TokenizerConfig, lookback: int, horizon: int,
                  n_paths: int) -> dict[str, float]:
    """FLOPs of one origin with n_paths paths: prefill, predictor decode steps, dual head, tokenizer decode."""
    d, ff, bits = p.d_model, p.ff_dim, t.s1_bits + t.s2_bits
    dt, ft = t.d_model, t.ff_dim
    enc, dec = t.n_enc_layers - 1, t.n_dec_layers - 1
    v1, v2 = 2**p.s1_bits, 2**p.s2_bits
    P = lookback
    prefill = (2.0 * P * t.d_in * dt + enc * (block(P, dt, ft) + causal_attention(P, dt)) + 2.0 * P * dt * bits
               + 2.0 * P * 2 * d * d + p.n_layers * (block(P, d, ff) + causal_attention(P, d)) + 2.0 * P * 2 * d * d
               + 2.0 * P * bits * dt + dec * (block(P, dt, ft) + causal_attention(P, dt)))
    decode = head = tok = 0.0
    for i in range(horizon):
        # dual head at step i: s1 projection, then the dependency layer (query, attention over P + i hidden
        # states, output projection) and the s2 projection
        head += 2.0 * d * v1 + 2.0 * d * d + 2.0 * 2 * d * (P + i) + 2.0 * d * d + 2.0 * d * v2
        if i + 1 < horizon:  # feed the sampled pair: fusion, blocks over P + i + 1 keys, dependency keys/values
            decode += (2.0 * 2 * d * d + p.n_layers * (block(1, d, ff) + 2.0 * 2 * d * (P + i + 1))
                       + 2.0 * 2 * d * d)
        tok += 2.0 * bits * dt + dec * (block(1, dt, ft) + 2.0 * 2 * dt * (P + i + 1)) + 2.0 * dt * t.d_in
    return {"prefill": prefill, "decode": n_paths * decode, "dual head": n_paths * head,
            "tokenizer decode": n_paths * tok}
