"""``crack-train profile``: parameters and GFLOPs of a registered variant at a given input size.

``--train`` times training steps instead; ``--train --procs 1 2`` times them with 1 and 2 processes
under torchrun on this machine (the scaling figure in docs/training.md).

GFLOPs are 2 x multiply-adds of one forward pass (PyTorch's FLOP counter), the convention of the
reference (student 63.9, teacher 1338 at 448x448).  The network is built on the ``meta`` device, so
profiling the 33 M-parameter teacher allocates nothing and takes about a second.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence


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
    Under torchrun ``batch`` is the global batch, split over the ranks as training splits it (DDP,
    BatchNorm over the global batch), and the figure is the whole group's images per second.
    """
    import time

    import torch

    from models import create_model
    from trainer import distributed
    from trainer.errors import ConfigError
    from trainer.losses import DeepSupervisionLoss
    from trainer.loop import choose_precision

    if crop % 4:
        raise ValueError(f"crop {crop} is not a multiple of 4")
    world = distributed.current()
    if batch % world.size:
        raise ConfigError(f"batch {batch} is the global batch: it must split evenly over {world.size} processes")
    per_rank = batch // world.size
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
        if world.distributed:
            net = distributed.sync_batchnorm(net, device)
        if prec.channels_last:
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        if world.distributed:
            net = distributed.data_parallel(net, device, sync_buffers=False)
        loss_fn = DeepSupervisionLoss("bce-dice")
        x = torch.randn(per_rank, 3, crop, crop, device=device)
        if prec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = (torch.rand(per_rank, 1, crop, crop, device=device) > 0.97).float()
        t0 = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                distributed.barrier()  # every rank starts the clock together
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
        distributed.barrier()  # the group is as fast as its slowest rank
        seconds = time.perf_counter() - t0
        row = {"arch": arch, "precision": name, "crop": crop, "batch": batch, "steps": steps, "procs": world.size,
               "img_per_s": round(steps * batch / seconds, 2), "s_per_step": round(seconds / steps, 3),
               "threads": torch.get_num_threads(), "device": device, "why": prec.why}
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def usable_cores() -> int:
    """CPU cores this process may run on (a container or taskset may give fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def scaling_rows(arch: str, procs: Sequence[int], crop: int, batch: int, steps: int, precisions: tuple[str, ...],
                 threads: int | None, device: str, on_row=None) -> list[dict[str, Any]]:
    """:func:`train_speed` with 1, 2, ... processes on this machine: one process in-line, more under torchrun.

    ``batch`` is the global batch throughout, so the figures compare the same work split N ways.
    Threads per process default to the usable cores divided by N, so N processes share the CPU
    one process would have had.
    """
    from trainer import distributed
    from trainer.errors import ConfigError, ToolUnavailable
    from trainer.loop import pick_device

    rows: list[dict[str, Any]] = []
    for n in procs:
        if n < 1 or batch % n:
            raise ConfigError(f"--procs {n}: the global batch {batch} must split evenly over {n} processes")
        t = threads or max(1, usable_cores() // n)
        if n == 1:
            got = train_speed(arch, crop, batch, steps, precisions=precisions, threads=t, device=pick_device(device))
        else:
            with tempfile.TemporaryDirectory(prefix="crack-profile-") as tmp:
                out = Path(tmp) / "rows.json"
                rc = distributed.launch(n, ["profile", "--train", "--arch", arch, "--crop", str(crop), "--batch-size",
                                            str(batch), "--steps", str(steps), "--precision", *precisions,
                                            "--threads", str(t), "--device", device, "--rows-out", str(out)])
                if rc != 0 or not out.exists():
                    raise ToolUnavailable(f"profile: torchrun with {n} processes failed (exit {rc}); see its output above")
                got = json.loads(out.read_text())
        for row in got:
            rows.append(row)
            if on_row:
                on_row(row)
    return rows
