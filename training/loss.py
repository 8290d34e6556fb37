"""The training objectives, as upstream trained the published checkpoints.

Predictor: tokens of a window in, the next tokens out; cross-entropy on s1 and on s2, where the s2 head is
conditioned on the true next s1 (teacher forcing); the loss is their mean. Position t carries the time features
of bar t and predicts bar t + 1, exactly as at inference.

Tokenizer (optional): reconstruction of the window from the full code and from its s1 bits alone (mean squared
error each), plus the binary spherical quantiser's loss (commitment + entropy terms, weights beta, gamma0, gamma,
zeta from the tokenizer's config.json); the loss is (reconstruction + quantiser) / 2.
Each objective is an nn.Module so DistributedDataParallel can wrap it (DDP synchronises on forward()).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kronos.model import Kronos, KronosTokenizer


class PredictorObjective(nn.Module):
    def __init__(self, model: Kronos):
        super().__init__()
        self.model = model

    def forward(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token pairs s1, s2 [B, L] and stamps [B, L, 5] of whole windows -> (loss, ce_s1, ce_s2)."""
        s1_logits, s2_logits = self.model.teacher_forced(s1[:, :-1], s2[:, :-1], stamp[:, :-1], s1[:, 1:])
        ce_s1 = F.cross_entropy(s1_logits.flatten(0, 1).float(), s1[:, 1:].flatten())
        ce_s2 = F.cross_entropy(s2_logits.flatten(0, 1).float(), s2[:, 1:].flatten())
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2


def entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p + 1e-8)).sum(-1)


class QuantiserLoss(nn.Module):
    """Binary spherical quantisation loss (Zhao et al. 2024) on the L2-normalised latent z [..., D], as upstream
    computes it: commitment + zeta * (gamma0 * per-sample entropy - gamma * codebook entropy).

    Upstream quirk kept on purpose: its "codebook entropy" is taken from the per-bit probabilities (the grouped
    soft assignment it computes first is overwritten), i.e. the sum over bits of the entropy of each bit's mean
    probability; so group_size does not enter the loss.
    """

    def __init__(self, bits: int, beta: float, gamma0: float, gamma: float, zeta: float):
        super().__init__()
        self.bits, self.beta, self.gamma0, self.gamma, self.zeta = bits, beta, gamma0, gamma, zeta

    def forward(self, z: Tensor, zq: Tensor) -> Tensor:
        """z: normalised latent; zq: its quantised code (+-1/sqrt(D), straight-through)."""
        p = torch.sigmoid(-4 * z / self.bits**0.5)  # soft probability of each bit being -1
        prob = torch.stack([p, 1 - p], -1)  # [..., D, 2]
        per_sample = entropy(prob).sum(-1).mean()
        codebook = entropy(prob.flatten(0, -3).mean(0)).sum()
        commit = self.beta * ((zq.detach() - z) ** 2).sum(-1).mean()
        return commit + self.zeta * (self.gamma0 * per_sample - self.gamma * codebook)


class TokenizerObjective(nn.Module):
    def __init__(self, tokenizer: KronosTokenizer, config: dict[str, Any]):
        super().__init__()
        self.tokenizer = tokenizer
        cfg = tokenizer.cfg
        try:
            self.quantiser = QuantiserLoss(cfg.s1_bits + cfg.s2_bits, float(config["beta"]),
                                           float(config["gamma0"]), float(config["gamma"]), float(config["zeta"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the tokenizer's config.json lacks the training fields beta, gamma0, gamma, zeta "
                             f"({exc}); it cannot be fine-tuned") from None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised windows x [B, L, 6] -> (loss, reconstruction loss, quantiser loss)."""
        z = self.tokenizer.latent(x)
        bits = z.shape[-1]
        zq = (z + (torch.where(z > 0, 1.0, -1.0).to(z.dtype) - z).detach()) / math.sqrt(bits)
        recon = (F.mse_loss(self.tokenizer.decode_code(zq, s1_only=True), x)
                 + F.mse_loss(self.tokenizer.decode_code(zq), x))
        quant = self.quantiser(z, zq)
        return (recon + quant) / 2, recon, quant
