"""``crack-train profile``: parameters and GFLOPs of a registered variant at a given input size.

GFLOPs are 2 x multiply-adds of one forward pass (PyTorch's FLOP counter), the convention of the
reference (student 63.9, teacher 1338 at 448x448).  The network is built on the ``meta`` device, so
profiling the 33 M-parameter teacher allocates nothing and takes about a second.
"""
from __future__ import annotations

from typing import Any


def profile(arch: str, size: tuple[int, int] = (448, 448)) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models import create_model

    h, w = size
    if h % 4 or w % 4:
        raise ValueError(f"input size {h}x{w} is not a multiple of 4")
    with torch.device("meta"):
        net = create_model(arch).eval()
        x = torch.empty(1, 3, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return {"arch": arch, "input_size": [h, w], "params": sum(p.numel() for p in net.parameters()),
            "gflops": round(counter.get_total_flops() / 1e9, 2)}
