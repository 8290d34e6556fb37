"""Our training losses and gradients equal the reference's (kronos-model-arch, test-only): the predictor's
teacher-forced cross-entropy on the published mini, small and base shapes, the tokenizer's reconstruction +
quantiser loss; dropout acts in training only."""
from __future__ import annotations

import pytest
import torch

from kronos.loading import load_trainable
from kronos.model import Kronos, KronosTokenizer
from support.kronos_checkpoints import predictor_config, tokenizer_config
from training.loss import PredictorObjective, TokenizerObjective

@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread beats two fighting over a loaded CI machine
    yield
    torch.set_num_threads(before)


SIZES = {"mini": (2, 24), "small": (2, 16), "base": (1, 8)}  # (batch, sequence): base stays fast


def random_batch(b: int, t: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s1, s2 = (torch.randint(0, 1024, (b, t), generator=g) for _ in range(2))
    highs = torch.tensor([60, 24, 7, 32, 13])
    stamp = (torch.rand(b, t, 5, generator=g) * highs).long()
    return s1, s2, stamp


def reference_loss(ref, s1, s2, stamp) -> torch.Tensor:
    """The reference's own training pass: teacher-forced forward, then its head's loss."""
    s1_logits, s2_logits = ref(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=True,
                               s1_targets=s1[:, 1:])
    return ref.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])[0]


def assert_grads_agree(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    theirs = dict(ref.named_parameters())
    n = 0
    for name, p in ours.named_parameters():
        g, r = p.grad, theirs[name].grad
        assert g is not None and r is not None, name
        scale = float(r.abs().max()) + 1e-12
        assert float((g - r).abs().max()) <= 1e-4 * scale, name
        n += 1
    assert n == len(theirs)


@pytest.mark.parametrize("shape", list(SIZES))
def test_predictor_loss_and_gradients_equal_the_reference(shape, tmp_path):
    from model import Kronos as RefKronos

    torch.manual_seed(11)
    ref = RefKronos(**predictor_config(shape))  # dropout 0 (the published configs' training values differ)
    ref.save_pretrained(tmp_path)
    ours, _ = load_trainable(Kronos, tmp_path)
    ref.train()
    s1, s2, stamp = random_batch(*SIZES[shape], seed=1)
    loss_ref = reference_loss(ref, s1, s2, stamp)
    loss, ce1, ce2 = PredictorObjective(ours)(s1, s2, stamp)
    assert abs(loss.item() - loss_ref.item()) <= 1e-5 and loss.item() == pytest.approx(((ce1 + ce2) / 2).item())
    loss.backward()
    loss_ref.backward()
    assert_grads_agree(ours, ref)


def test_tokenizer_loss_and_gradients_equal_the_reference(tmp_path):
    import torch.nn.functional as F
    from model import KronosTokenizer as RefTokenizer

    torch.manual_seed(12)
    cfg = tokenizer_config("mini")
    ref = RefTokenizer(**cfg)
    ref.save_pretrained(tmp_path)
    ours, ckpt = load_trainable(KronosTokenizer, tmp_path)
    x = torch.randn(2, 32, 6, generator=torch.Generator().manual_seed(2)).clamp(-5, 5)
    ref.train()
    (z_pre, z), bsq_loss, _, _ = ref(x)
    loss_ref = (F.mse_loss(z_pre, x) + F.mse_loss(z, x) + bsq_loss) / 2  # upstream's tokenizer objective
    loss, _, quant = TokenizerObjective(ours, ckpt.config)(x)
    assert abs(loss.item() - loss_ref.item()) <= 1e-5 and abs(quant.item() - bsq_loss.item()) <= 1e-6
    loss.backward()
    loss_ref.backward()
    assert_grads_agree(ours, ref)


def test_dropout_acts_only_in_training(tmp_path):
    from kronos.layers import set_dropout
    from model import Kronos as RefKronos

    torch.manual_seed(13)
    RefKronos(**predictor_config("tiny")).save_pretrained(tmp_path)
    ours, _ = load_trainable(Kronos, tmp_path)
    s1, s2, stamp = random_batch(2, 12, seed=3)
    plain = ours(s1, s2, stamp).detach()
    set_dropout(ours, 0.2, 0.2, 0.2)
    ours.token_dropout = 0.2
    torch.manual_seed(0)
    a = ours(s1, s2, stamp).detach()
    torch.manual_seed(0)
    b = ours(s1, s2, stamp).detach()
    c = ours(s1, s2, stamp).detach()
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, plain)
    ours.eval()
    assert torch.equal(ours(s1, s2, stamp).detach(), plain)
