"""The training loop every step shares: optimise, validate, schedule, checkpoint, log, plot.

A run directory holds ``config.json`` (the settings), ``last.pt`` (written atomically after every
epoch: weights, optimiser, scheduler, history), ``best.pt`` (weights with the best validation
F1(2px)), ``log.csv`` and ``curves.png``.  ``--resume`` continues from ``last.pt``, so Ctrl-C or a
kill loses at most the epoch in progress.

Under ``torchrun`` (:mod:`trainer.distributed`) the same loop runs on every rank: ``--batch-size``
is the global batch, each rank trains on its slice of every step (:class:`trainer.data.StepShares`)
inside DistributedDataParallel, BatchNorm statistics are global (``--sync-bn``), and rank 0 alone
validates, schedules from the figures it broadcasts, writes the run directory and logs.  A stop
asked on any rank is agreed by all at the same step, so every rank leaves together.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.card import sha256_file
from trainer import distributed
from trainer.checkpoint import read_checkpoint
from trainer.config import TrainSettings
from trainer.data import Pair, StepShares, collate, read_pair
from trainer.errors import ConfigError, MissingInput
from models.preprocess import Preprocessor, predict_frame
from models.registry import DEFAULT_VARIANT, variant_defaults
from trainer.inference import TorchPredictor
from trainer.metrics import MetricSet, mean_over_sets
from trainer.progress import Progress

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the epoch in progress is dropped, the last checkpoint stands."""


class StopOnSignal:
    """SIGTERM and Ctrl-C ask the loop to stop at its next safe point; a second one stops at once.

    The handler only records the signal: an exception raised from a handler lands wherever the
    main thread happens to be, and inside ``import matplotlib`` (the first plot) CPython turns
    it into "ImportError: initialization failed", so a kill exited 1 instead of 130.  Safe points
    are every training step and the end of each epoch's bookkeeping, so a stop still loses at
    most the epoch in progress and comes within one step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if _main_thread():  # signal handlers can only be set there; elsewhere the caller stops us
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:  # asked twice: the user means now
            raise Interrupted(f"{name} (second)")
        self.reason = name
        log.warning("event=stopping signal=%s at='next training step or end of epoch'", name)

    def check(self, failed: bool = False) -> bool:
        """Raise Interrupted if a stop was asked here or on any other rank; ``failed`` as agreed by all ranks.

        One all-reduce under torchrun (none alone): ranks stop at the same step, so none is left
        waiting in a collective that the others have walked away from.
        """
        asked, failed = distributed.any_rank(self.reason is not None, failed)
        if asked:
            raise Interrupted(self.reason or "stop asked on another rank")
        return failed


def pick_device(name: str) -> str:
    """``auto`` is CUDA where present; under torchrun each rank gets cuda:LOCAL_RANK (or the CPU)."""
    return distributed.local_device(name)


@dataclass(frozen=True)
class Precision:
    """How a training step runs: autocast dtype (or none) and memory format, with the reason."""
    name: str                  # "fp32", "bf16" or "fp16"
    autocast: bool
    dtype: torch.dtype
    channels_last: bool
    why: str


def _cpu_has_fast_bf16() -> bool:
    """oneDNN's own test for native bf16 (AVX512-BF16, AMX, Arm BF16): without it bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(device: str, amp: bool = True) -> Precision:
    """Mixed precision where it pays: bf16 autocast + channels-last on CPUs with native bf16, bf16/fp16 on CUDA.

    Measured on the 2-core dev CPU (AMD EPYC, AVX2 only, torch 2.13; `crack-train profile --train
    --arch student --steps 4`): fp32 2.08 img/s, bf16 0.16 img/s -- emulated bf16 is 13x slower, so
    here it stays fp32.  Weights, optimiser state, the loss and validation stay fp32 in every case.
    """
    if not amp:
        return Precision("fp32", False, torch.float32, device.startswith("cuda"), "--no-amp")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", True, torch.bfloat16, True, "CUDA with bf16")
        return Precision("fp16", True, torch.float16, True, "CUDA without bf16: fp16 with a gradient scaler")
    if _cpu_has_fast_bf16():
        return Precision("bf16", True, torch.bfloat16, True, "CPU with native bf16")
    return Precision("fp32", False, torch.float32, False,
                     f"CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}): bf16 would be emulated")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.learning_rate)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


class Validator:
    """Whole-image validation as the daemon predicts, F1(2px) at the best of a threshold grid.

    ``pairs`` is one list, or several by set name (each training set's own val split).  With several,
    the figure that picks the checkpoint and the threshold is the *mean over sets* of each set's
    F1(2px) at one common threshold, so a 7-image set weighs as much as a 32-image one and no set's
    pixel count drowns the others; each set's own figures at that threshold come beside it
    (``val_f1_tol@SET``, ``val_iou@SET``).  With one set this is that set's F1(2px), as before.
    """

    def __init__(self, pairs: Sequence[Pair] | dict[str, Sequence[Pair]], size: int, device: str,
                 temperature: float = 1.0, arch: str = DEFAULT_VARIANT) -> None:
        sets = pairs if isinstance(pairs, dict) else {"val": pairs}
        self.sets = {name: [(p.name, *read_pair(p)) for p in ps] for name, ps in sets.items() if ps}
        if not self.sets:
            raise ConfigError("validation: no images")
        # The daemon's pre-processing with the variant's normalisation: what the picked threshold runs on.
        self.pre = Preprocessor(variant_defaults(arch), (size, size) if size else "native")
        self.device = device
        self.temperature = temperature

    def __call__(self, net: nn.Module) -> dict[str, float]:
        was_training = net.training
        net.eval()
        predict = TorchPredictor(net, self.device, self.temperature)
        per_set: dict[str, MetricSet] = {}
        for set_name, items in self.sets.items():
            ms = per_set[set_name] = MetricSet()
            for name, img, gt in items:
                ms.update(predict_frame(predict, img, self.pre.card, self.pre.size, self.pre), gt, name)
        net.train(was_training)
        return combine_sets(per_set)


def combine_sets(per_set: dict[str, MetricSet]) -> dict[str, float]:
    """The validation figures of several sets: mean F1(2px) over sets at the best common threshold."""
    t, mean_f1_tol, figures = mean_over_sets(per_set)
    out = {"val_f1_tol": mean_f1_tol, "val_f1": float(np.mean([f["f1"] for f in figures.values()])),
           "val_iou": float(np.mean([f["iou"] for f in figures.values()])), "val_threshold": t}
    if len(per_set) > 1:
        for name, f in figures.items():
            out[f"val_f1_tol@{name}"] = f["f1_tol"]
            out[f"val_iou@{name}"] = f["iou"]
        log.info("event=val threshold=%.2f mean_f1_tol=%.4f %s", t, out["val_f1_tol"],
                 " ".join(f"f1_tol@{n}={f['f1_tol']:.4f}({f['images']})" for n, f in figures.items()))
    return out


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_val_f1_tol: float
    epochs_run: int
    stopped_early: bool


def init_weights(net: nn.Module, path: Path, meta: dict[str, Any], device: str) -> None:
    """Load another run's weights into ``net``: the start of a fine-tune, not a resume."""
    ck = read_checkpoint(path, "init", device)
    state, arch = ck["model"], ck["meta"].get("arch")
    if arch != meta.get("arch"):
        raise ConfigError(f"init: {path}: checkpoint is a {arch!r}, this run a {meta.get('arch')!r}")
    net.load_state_dict(state)
    epoch = ck.get("epoch", ck["meta"].get("epoch"))  # last.pt keeps it beside the weights, best.pt in meta
    meta["init"] = {"checkpoint": str(path), "sha256": sha256_file(path), "epoch": epoch}
    log.info("event=init checkpoint=%s arch=%s epoch=%s", path, arch, epoch)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # a second Ctrl-C or a full disk mid-write: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], marker=".")
    a.set_xlabel("epoch"), a.set_ylabel("train loss"), a.set_yscale("log"), a.grid(alpha=0.3)
    b.plot(ep, [r["val_f1_tol"] for r in history], marker=".", label="F1 (2 px)")
    b.plot(ep, [r["val_f1"] for r in history], marker=".", label="F1 (strict)")
    b.set_xlabel("epoch"), b.set_ylabel("validation"), b.set_ylim(0, 1), b.grid(alpha=0.3), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fit(net: nn.Module, train_set, loss_fn: nn.Module, validate: Callable[[nn.Module], dict[str, float]],
        cfg: TrainSettings, meta: dict[str, Any]) -> RunResult:
    """Train ``net`` on ``train_set`` until ``cfg.epochs`` or early stop; returns the best epoch.

    ``meta`` goes into every checkpoint (arch, deploy temperature, data, recipe) so that export
    and eval need nothing but the checkpoint.
    """
    world = distributed.current()
    device = pick_device(cfg.device)
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch: it must split evenly over "
                          f"{world.size} processes (try {max(1, cfg.batch_size // world.size) * world.size})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    seed_everything(cfg.seed)

    net.to(device)
    if world.distributed and cfg.sync_bn:
        net = distributed.sync_batchnorm(net, device)
    prec = choose_precision(device, cfg.amp)
    if prec.channels_last:
        net.to(memory_format=torch.channels_last)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(net.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
    use_amp, amp_dtype = prec.autocast, prec.dtype
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, since_best = 0, -1.0, -1, 0
    if cfg.init is not None and not cfg.resume:  # a resumed run already holds the fine-tuned weights
        init_weights(net, Path(cfg.init), meta, device)
    ema = make_ema(net, cfg.ema_decay)
    if cfg.resume:
        ck = _resume_state(last_path, meta)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None:
            if "ema" not in ck:
                raise ConfigError(f"{last_path}: saved without --ema-decay; resume with the run's own settings")
            ema.load_state_dict(ck["ema"])
        history = ck["history"]
        start_epoch, best, best_epoch, since_best = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["since_best"]
        torch.set_rng_state(ck["torch_rng"])
        log.info("event=resume run_dir=%s epoch=%d best_val_f1_tol=%.4f", run_dir, start_epoch, best)
    if world.is_main:
        (run_dir / "config.json").write_text(json.dumps(
            {"settings": json.loads(cfg.model_dump_json()), "meta": meta, "device": device,
             "world_size": world.size, "torch": torch.__version__, "argv": sys.argv}, indent=2) + "\n")
    train_net = distributed.data_parallel(net, device, not cfg.sync_bn) if world.distributed else net

    stopped_early = False
    log.info("event=start run_dir=%s device=%s arch=%s params=%d epochs=%d samples_per_epoch=%d batch=%d lr=%g "
             "precision=%s why=%r world_size=%d per_rank_batch=%d", run_dir, device, meta.get("arch"),
             sum(p.numel() for p in net.parameters()), cfg.epochs, len(train_set), cfg.batch_size,
             cfg.learning_rate, prec.name, prec.why, world.size, cfg.batch_size // world.size)
    try:
        with StopOnSignal() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.monotonic()
                train_set.set_epoch(epoch)
                if world.distributed:  # dropout masks (the teacher's) differ per rank, reproducibly per epoch
                    torch.manual_seed(hash((cfg.seed, epoch, world.rank)) % 2**63)
                # The average follows the plain module: DDP's parameters are the same tensors.
                after_step = (lambda: ema.update_parameters(net)) if ema is not None else None
                terms = _train_epoch(train_net, train_set, loss_fn, optimizer, scaler, cfg, device, use_amp, amp_dtype,
                                     epoch, stop, after_step)
                # Rank 0 validates; every rank steps its scheduler and early stop on the same figures.
                judged = ema.module if ema is not None else net
                val = distributed.on_main(validate, judged)
                scheduler.step(val["val_f1_tol"])
                row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": terms.pop("loss"),
                       **{f"train_{k}": v for k, v in terms.items()}, **val,
                       "seconds": round(time.monotonic() - t0, 1)}
                history.append(row)
                improved = val["val_f1_tol"] > best
                if improved:
                    best, best_epoch, since_best = val["val_f1_tol"], epoch, 0
                else:
                    since_best += 1
                if world.is_main:
                    state = {"model": judged.state_dict(), "meta": {**meta, "epoch": epoch, "val": val,
                                                                    "settings": json.loads(cfg.model_dump_json())}}
                    if improved:
                        _atomic_save(state, best_path)
                    extra = {"model": net.state_dict(), "ema": ema.state_dict()} if ema is not None else {}
                    _atomic_save({**state, **extra, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "scaler": scaler.state_dict(), "epoch": epoch, "best": best,
                                  "best_epoch": best_epoch, "since_best": since_best, "history": history,
                                  "torch_rng": torch.get_rng_state()}, last_path)
                    write_csv(run_dir / "log.csv", history)
                    plot_curves(run_dir / "curves.png", history)
                log.info("event=epoch epoch=%d train_loss=%.4f val_f1_tol=%.4f val_f1=%.4f val_iou=%.4f "
                         "val_threshold=%.2f lr=%.2g seconds=%.0f best_epoch=%d",
                         epoch, row["train_loss"], val["val_f1_tol"], val["val_f1"], val["val_iou"],
                         val["val_threshold"], row["lr"], row["seconds"], best_epoch)
                if since_best >= cfg.early_stop:
                    stopped_early = True
                    log.info("event=early_stop epoch=%d epochs_without_improvement=%d", epoch, since_best)
                    break
                stop.check()  # the epoch is saved (rank 0 saves before it joins this check): a stop loses nothing
    except (KeyboardInterrupt, Interrupted) as e:
        done = history[-1]["epoch"] if history else -1
        log.warning("event=interrupted reason=%s last_complete_epoch=%d resume='same command with --resume'",
                    type(e).__name__ if isinstance(e, KeyboardInterrupt) else e, done)
        raise Interrupted(str(e)) from None
    distributed.barrier()
    return RunResult(run_dir, best_epoch, best, len(history), stopped_early)


def _resume_state(last_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``last.pt``, read by rank 0 (only it writes the run directory) and the same on every rank."""
    return distributed.on_main(_read_last, last_path, meta)


def _read_last(last_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    if not last_path.exists():
        raise MissingInput(f"{last_path}: nothing to resume (start without --resume)")
    # Onto the CPU: load_state_dict moves the weights to the device; the RNG state must stay a CPU tensor.
    ck = read_checkpoint(last_path, "resume", "cpu", needs=("model", "meta", "optimizer", "scheduler", "scaler",
                                                           "history", "epoch", "torch_rng"))
    if ck["meta"].get("arch") != meta.get("arch"):
        raise ConfigError(f"{last_path}: checkpoint is a {ck['meta'].get('arch')!r}, this run a {meta.get('arch')!r}")
    return ck


class _Quiet:
    """The progress bar of ranks other than 0: they train in step with it and say nothing."""

    def update(self, done: int, **figures: float) -> None:
        pass

    def close(self) -> None:
        pass


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def make_ema(net: nn.Module, decay: float) -> "torch.optim.swa_utils.AveragedModel | None":
    """The averaged copy of ``net`` (weights and BatchNorm buffers), or None when ``decay`` is 0.

    Batches of 4 make each step's weights noisy (validation moves by +-0.005 from epoch to epoch at a
    constant rate); the average is what gets judged and saved.
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(net)  # the average starts at the initial weights (a fine-tune's: the release)
    return ema


def _warmup(optimizer: torch.optim.Optimizer, cfg: TrainSettings, step: int) -> None:
    """Linear warm-up over the first ``cfg.warmup_steps`` steps (``step`` counts from 1, over epochs)."""
    if step <= cfg.warmup_steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * step / cfg.warmup_steps


def _train_epoch(net, train_set, loss_fn, optimizer, scaler, cfg, device, use_amp, amp_dtype, epoch,
                 stop: StopOnSignal, after_step: Callable[[], None] | None = None) -> dict[str, float]:
    world = distributed.current()
    shares = StepShares(len(train_set), cfg.batch_size, world.rank, world.size)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=shares, num_workers=cfg.workers, collate_fn=collate,
                                         pin_memory=device.startswith("cuda"))
    if len(loader) == 0:
        raise ConfigError(f"samples_per_epoch {len(train_set)} < batch_size {cfg.batch_size}: no step per epoch")
    net.train()
    sums: dict[str, float] = {}
    bar = Progress(len(loader), f"epoch={epoch}") if world.is_main else _Quiet()
    for step, batch in enumerate(loader, 1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if use_amp:  # channels-last goes with autocast (choose_precision): oneDNN's fast bf16 kernels want NHWC
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=amp_dtype,
                            enabled=use_amp):
            outputs = net(batch["image"])
        terms = loss_fn(outputs, batch)
        loss = terms["loss"]
        value = loss.item()
        if stop.check(failed=not math.isfinite(value)):  # the safe point: before this step changes the weights
            raise FloatingPointError(f"loss became non-finite at epoch {epoch} step {step} (rank {world.rank}: "
                                     f"{value}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        _warmup(optimizer, cfg, epoch * len(loader) + step)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.update(step, loss=sums["loss"] / step)
    bar.close()
    # Each rank's mean over its shares; their mean is the global batch's (equal shares, per-pixel losses).
    return distributed.mean_over_ranks({k: v / len(loader) for k, v in sums.items()})
