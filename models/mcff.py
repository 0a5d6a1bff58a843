"""MCFF-L Net: three parallel convolution paths fused at the output.

The network is described in ``../shared/reference/mcff-l-net.md``; this file is the one
place it lives.  Paths X (dilated), Y (rectangular) and H (standard) run side by side
from the input and meet only at the end, where their heads are summed into ``mix``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MCFFConfig:
    width: int = 16          # d: 16 for the student, 64 for the teacher
    n_blocks: int = 4        # residual blocks per path
    dropout: float = 0.0     # before each transposed convolution (teacher: 0.5)
    depthwise: bool = False  # MCLD: depthwise 3x3 + pointwise 1x1 in residual blocks
    in_channels: int = 3


def conv(cin: int, cout: int, k: tuple[int, int] | int, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution with 'same' padding (for stride 1)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    return nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, dilation=dilation, bias=False)


def inorm(c: int) -> nn.InstanceNorm2d:
    # Learned scale and shift, as the reference's IN.
    return nn.InstanceNorm2d(c, affine=True)


class RectPair(nn.Module):
    """(kh x kw then a x 1) + (kw x kh then 1 x a): the Y path's summed rectangular pair."""

    def __init__(self, cin: int, cout: int, long: int, short: int) -> None:
        super().__init__()
        self.vertical = nn.Sequential(conv(cin, cout, (long, 3)), conv(cout, cout, (short, 1)))
        self.horizontal = nn.Sequential(conv(cin, cout, (3, long)), conv(cout, cout, (1, short)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vertical(x) + self.horizontal(x)


class DownRectPair(nn.Module):
    """(3x1 then 3x1) + (1x3 then 1x3), summed."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.vertical = nn.Sequential(conv(cin, cout, (3, 1)), conv(cout, cout, (3, 1)))
        self.horizontal = nn.Sequential(conv(cin, cout, (1, 3)), conv(cout, cout, (1, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vertical(x) + self.horizontal(x)


class MCLBlock(nn.Module):
    """x + IN(conv3x3(ReLU(IN(conv3x3(x))))); MCLD swaps each 3x3 for depthwise + pointwise."""

    def __init__(self, c: int, depthwise: bool = False) -> None:
        super().__init__()

        def c3() -> nn.Module:
            if depthwise:
                return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                                     nn.Conv2d(c, c, 1, bias=False))
            return conv(c, c, 3)

        self.body = nn.Sequential(c3(), inorm(c), nn.ReLU(inplace=True), c3(), inorm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def up(cin: int, cout: int, norm: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(cout) if norm == "bn" else inorm(cout),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class Path(nn.Module):
    """One of the three paths: stem, two downs, residual blocks, two ups, head."""

    def __init__(self, stem: nn.Module, downs: list[nn.Module], blocks: nn.Module,
                 ups: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.down = nn.Sequential(*downs)
        self.blocks = blocks
        self.up = nn.Sequential(*ups)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N,3,H,W] -> stem [N,d,H,W] -> down [N,4d,H/4,W/4] -> up [N,d,H,W] -> head [N,3,H,W]
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


def _blocks(c: int, cfg: MCFFConfig) -> nn.Sequential:
    return nn.Sequential(*[MCLBlock(c, cfg.depthwise) for _ in range(cfg.n_blocks)])


def path_x(cfg: MCFFConfig) -> Path:
    d = cfg.width
    stem = nn.Sequential(conv(cfg.in_channels, d, 3, dilation=3), conv(d, d, 3, dilation=2), inorm(d), nn.ReLU(True))

    def down(c: int) -> nn.Module:
        return nn.Sequential(conv(c, 2 * c, 3, dilation=3), conv(2 * c, 2 * c, 3, dilation=2),
                             nn.MaxPool2d(2), inorm(2 * c), nn.ReLU(True))

    # The heads narrow to 3 channels at their first convolution: this is what gives the
    # reference's 1.179 M (student) and 32.9 M (teacher) parameters.
    head = nn.Sequential(conv(d, 3, 3, dilation=3), conv(3, 3, 3, dilation=2))
    return Path(stem, [down(d), down(2 * d)], _blocks(4 * d, cfg),
                [up(4 * d, 2 * d, "bn", cfg.dropout), up(2 * d, d, "bn", cfg.dropout)], head)


def path_y(cfg: MCFFConfig) -> Path:
    d = cfg.width
    stem = nn.Sequential(RectPair(cfg.in_channels, d, 7, 3), conv(d, d, 7), inorm(d), nn.ReLU(True))

    def down(c: int) -> nn.Module:
        return nn.Sequential(DownRectPair(c, 2 * c), nn.MaxPool2d(2), inorm(2 * c), nn.ReLU(True))

    head = nn.Sequential(RectPair(d, 3, 7, 3), conv(3, 3, 7))
    return Path(stem, [down(d), down(2 * d)], _blocks(4 * d, cfg),
                [up(4 * d, 2 * d, "in", cfg.dropout), up(2 * d, d, "in", cfg.dropout)], head)


def path_h(cfg: MCFFConfig) -> Path:
    d = cfg.width
    stem = nn.Sequential(conv(cfg.in_channels, d, 3, dilation=2), conv(d, d, 7), inorm(d), nn.ReLU(True))

    def down(c: int) -> nn.Module:
        return nn.Sequential(conv(c, 2 * c, 3, dilation=2), conv(2 * c, 2 * c, 3, stride=2),
                             inorm(2 * c), nn.ReLU(True))

    head = conv(d, 3, 7)
    return Path(stem, [down(d), down(2 * d)], _blocks(4 * d, cfg),
                [up(4 * d, 2 * d, "in", cfg.dropout), up(2 * d, d, "in", cfg.dropout)], head)


def attention_logits(out: torch.Tensor) -> torch.Tensor:
    """Channel 0 gates the two class logits: [N,3,H,W] -> [N,2,H,W] (crack, background)."""
    return out[:, 1:3] * torch.sigmoid(out[:, 0:1])


class MCFFLNet(nn.Module):
    """Returns the four attention-gated logit maps ``h``, ``x``, ``y``, ``mix`` ([N,2,H,W] each)."""

    def __init__(self, cfg: MCFFConfig = MCFFConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.path_h = path_h(cfg)
        self.path_x = path_x(cfg)
        self.path_y = path_y(cfg)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c, hgt, wid = image.shape
        if hgt % 4 or wid % 4:
            raise ValueError(
                f"MCFF-L Net needs H and W divisible by 4 (two 2x down-samplings); got {hgt}x{wid}, "
                f"pad to {(hgt + 3) // 4 * 4}x{(wid + 3) // 4 * 4}")
        h = self.path_h(image)
        x = self.path_x(image)
        y = self.path_y(image)
        mix = h + x + y
        return {name: attention_logits(t) for name, t in (("h", h), ("x", x), ("y", y), ("mix", mix))}


class DeployHead(nn.Module):
    """What ships: the ``mix`` output only, as the crack probability [N,1,H,W] in [0, 1]."""

    def __init__(self, net: MCFFLNet, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(image)["mix"] / self.temperature
        return F.softmax(logits, dim=1)[:, 0:1]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
