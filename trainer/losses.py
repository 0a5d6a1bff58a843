"""Segmentation losses on MCFF-L Net's two-channel (crack, background) logits.

``asymmetric``: the published loss, mse(200 y, 200 p_crack) + mse(1 - y, p_bg) + mse(p_crack + p_bg, 1).
``bce-dice``: class-balanced binary cross-entropy on the crack-vs-background margin plus soft Dice.
Both accept soft targets in [0, 1], so distillation reuses them against the teacher's labels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("asymmetric", "bce-dice")
OUTPUTS = ("h", "x", "y", "mix")


def asymmetric_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The published loss: the crack channel weighs 200^2 = 40 000 times the background channel."""
    p = F.softmax(logits.float() / temperature, dim=1)
    p_crack, p_bg = p[:, 0:1], p[:, 1:2]
    y = target.float()
    return (F.mse_loss(200 * p_crack, 200 * y) + F.mse_loss(p_bg, 1 - y)
            + F.mse_loss(p_crack + p_bg, torch.ones_like(y)))


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
                  max_pos_weight: float = 10.0) -> torch.Tensor:
    """Class-balanced BCE + soft Dice.

    With a 2-way softmax, p_crack = sigmoid(l_crack - l_bg), so BCE runs on that margin.  Crack
    pixels are weighted by the batch's background/crack ratio, capped: uncapped (about 60 on
    CrackForest) it paints thick cracks and ruins strict precision.
    """
    z = (logits[:, 0:1].float() - logits[:, 1:2].float()) / temperature
    y = target.float()
    pos = y.sum()
    neg = y.numel() - pos
    pos_weight = (neg / pos.clamp(min=1.0)).clamp(1.0, max_pos_weight).detach()
    bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight)
    p = torch.sigmoid(z)
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return bce + dice


def seg_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    if kind == "asymmetric":
        return asymmetric_loss(logits, target, temperature)
    if kind == "bce-dice":
        return bce_dice_loss(logits, target, temperature)
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


class DeepSupervisionLoss(nn.Module):
    """Step 1 and the plain student: all four outputs trained on the hard label, averaged."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {f"hard_{k}": seg_loss(self.kind, outputs[k], batch["target"]) for k in OUTPUTS}
        terms["loss"] = torch.stack(list(terms.values())).mean()
        return terms


class DistillationLoss(nn.Module):
    """Step 3: four soft terms against the teacher's labels plus one hard term on ``mix_for_real``.

    ``temperatures`` divides the student's h, x, y, mix logits before the softmax (all equal to the
    labels' T for standard and hyperthermal KD; different per output for non-isothermal KD).
    ``t_real`` is the temperature of ``mix_for_real`` (1 for standard KD, T for hyperthermal).
    ``loss = alpha * mean(soft terms) + (1 - alpha) * hard``.
    """

    def __init__(self, kind: str, temperatures: Sequence[float], t_real: float, alpha: float) -> None:
        super().__init__()
        if len(temperatures) != len(OUTPUTS):
            raise ValueError(f"need {len(OUTPUTS)} temperatures (h, x, y, mix), got {len(temperatures)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.kind = kind
        self.temperatures = [float(t) for t in temperatures]
        self.t_real = float(t_real)
        self.alpha = float(alpha)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        soft = batch["soft"]
        terms = {f"soft_{k}": seg_loss(self.kind, outputs[k], soft[:, i:i + 1], t)
                 for i, (k, t) in enumerate(zip(OUTPUTS, self.temperatures))}
        soft_loss = torch.stack(list(terms.values())).mean()
        hard_loss = seg_loss(self.kind, outputs["mix"], batch["target"], self.t_real)
        terms.update(soft_loss=soft_loss, hard_loss=hard_loss,
                     loss=self.alpha * soft_loss + (1 - self.alpha) * hard_loss)
        return terms
