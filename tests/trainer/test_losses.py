"""The published asymmetric loss, BCE+Dice, the distillation terms, and a loss that really falls."""
from __future__ import annotations

import pytest
import torch

from models import create_model
from trainer.losses import DeepSupervisionLoss, DistillationLoss, asymmetric_loss, bce_dice_loss


def logits_for(p_crack: torch.Tensor) -> torch.Tensor:
    """Two-channel logits whose softmax gives exactly p_crack on channel 0."""
    return torch.cat([torch.log(p_crack), torch.log(1 - p_crack)], dim=1)


def test_asymmetric_loss_matches_the_published_formula():
    y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    p = torch.tensor([[[[0.75, 0.5], [0.25, 0.0 + 1e-6]]]])
    got = asymmetric_loss(logits_for(p), y)
    crack = ((200 * y - 200 * p) ** 2).mean()
    bg = (((1 - y) - (1 - p)) ** 2).mean()
    assert got.item() == pytest.approx((crack + bg).item(), rel=1e-4)   # p_crack + p_bg == 1: third term 0
    assert asymmetric_loss(logits_for(y.clamp(1e-6, 1 - 1e-6)), y).item() < 1e-3


def test_temperature_softens_the_softmax():
    y = torch.ones(1, 1, 2, 2)
    logits = torch.tensor([4.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    assert asymmetric_loss(logits, y, temperature=10).item() > asymmetric_loss(logits, y, temperature=1).item()


def test_bce_dice_is_low_for_right_and_high_for_wrong_logits():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 3, :] = 1
    right = torch.cat([10 * (2 * y - 1), torch.zeros_like(y)], dim=1)
    assert bce_dice_loss(right, y).item() < 0.01
    assert bce_dice_loss(-right, y).item() > 2.0


def test_distillation_returns_named_terms_and_weights_them():
    torch.manual_seed(0)
    outputs = {k: torch.randn(2, 2, 8, 8) for k in ("h", "x", "y", "mix")}
    batch = {"target": (torch.rand(2, 1, 8, 8) > 0.8).float(), "soft": torch.rand(2, 4, 8, 8)}
    kd = DistillationLoss("asymmetric", [10, 10, 10, 10], t_real=1.0, alpha=0.9)
    terms = kd(outputs, batch)
    assert set(terms) == {"loss", "soft_loss", "hard_loss", "soft_h", "soft_x", "soft_y", "soft_mix"}
    assert terms["loss"].item() == pytest.approx(0.9 * terms["soft_loss"].item() + 0.1 * terms["hard_loss"].item())
    assert DistillationLoss("asymmetric", [10] * 4, 1.0, 1.0)(outputs, batch)["loss"].item() == \
        pytest.approx(terms["soft_loss"].item())
    hot = DistillationLoss("asymmetric", [10] * 4, t_real=10.0, alpha=0.9)(outputs, batch)
    assert hot["hard_loss"].item() != pytest.approx(terms["hard_loss"].item())
    with pytest.raises(ValueError, match="four|4 temperatures"):
        DistillationLoss("bce-dice", [1, 2], 1.0, 0.5)


@pytest.mark.parametrize("kind", ["bce-dice", "asymmetric"])
def test_loss_falls_when_training_a_student_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    net = create_model("student")
    x = torch.randn(1, 3, 24, 24)
    y = torch.zeros(1, 1, 24, 24)
    y[:, :, 11:13, :] = 1
    x[:, :, 11:13, :] -= 2  # the crack is darker, so there is something to learn
    loss_fn = DeepSupervisionLoss(kind)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        terms = loss_fn(net(x), {"target": y})
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert set(terms) == {"loss", "hard_h", "hard_x", "hard_y", "hard_mix"}
    assert losses[-1] < 0.7 * losses[0], losses
