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


def train_speed(arch: str, crop: int = 224, batch: int = 4, steps: int = 6, warmup: int = 2,
                precisions: tuple[str, ...] = ("fp32", "bf16"), threads: int | None = None,
                device: str = "cpu", on_row=None) -> list[dict[str, Any]]:
    """Training images per second of one variant, per precision, on random crops: plan a run with it.

    Each row times ``steps`` optimiser steps (AdamW, the deep-supervision loss, batch of ``batch``
    crops of ``crop`` x ``crop``) after ``warmup`` untimed ones, in the same step code as training
    (``trainer.loop.choose_precision``), so the figure is what ``fit`` gets, minus data loading.
    """
    import time

    import torch

    from models import create_model
    from trainer.losses import DeepSupervisionLoss
    from trainer.loop import choose_precision

    if crop % 4:
        raise ValueError(f"crop {crop} is not a multiple of 4")
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name in precisions:
        prec = choose_precision(device, amp=name != "fp32")
        if prec.name != name:  # asked for bf16 where this machine would not use it: say so, time it anyway
            prec = type(prec)(name, True, torch.bfloat16 if name == "bf16" else torch.float16, True,
                              f"forced ({prec.why})")
        torch.manual_seed(0)
        net = create_model(arch).to(device).train()
        if prec.channels_last:
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        loss_fn = DeepSupervisionLoss("bce-dice")
        x = torch.randn(batch, 3, crop, crop, device=device)
        if prec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch, 1, crop, crop, device=device) > 0.97).float()
        t0 = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=prec.dtype,
                                enabled=prec.autocast):
                out = net(x)
            loss = loss_fn(out, {"target": y})["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {"arch": arch, "precision": name, "crop": crop, "batch": batch, "steps": steps,
               "img_per_s": round(steps * batch / seconds, 2), "s_per_step": round(seconds / steps, 3),
               "threads": torch.get_num_threads(), "device": device, "why": prec.why}
        rows.append(row)
        if on_row:
            on_row(row)
    return rows
