"""Logit filtering and sampling with the upstream predictor's semantics."""
from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Return a copy of logits [..., V] with removed tokens set to -inf.

    top_k > 0: keep tokens at least as large as the k-th largest (ties kept); top_p is then ignored.
    Otherwise, if top_p < 1: keep the smallest prefix of the descending order whose cumulative
    probability reaches top_p, including the first token that crosses it (so at least one survives).
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        cum = ordered.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # shift right: the crossing token stays
        drop[..., 0] = False
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(logits: Tensor, u: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Draw one token per row of logits [B, V] by inverting the CDF at uniforms u [B] in [0, 1).

    Inverse-CDF sampling with pre-drawn uniforms gives each path its own random numbers, so a path's
    result does not depend on how paths are batched or chunked.
    """
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    cdf = probs.cumsum(-1)
    # u < 1 keeps the threshold below the total mass, so the index lands on a token with probability > 0
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True)
    return idx.squeeze(-1).clamp_(max=logits.shape[-1] - 1)
