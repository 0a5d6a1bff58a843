"""Several processes, one training run: the process group under ``torchrun`` and what ranks agree on.

``torchrun`` starts one process per GPU (or per CPU share) and tells each, through the environment,
who it is: ``RANK`` (0..WORLD_SIZE-1 across all machines), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its
index on this machine, hence its GPU).  Without those variables, or with ``WORLD_SIZE=1``, nothing
here does anything: :func:`session` yields a one-process :class:`World` and every helper is the
identity, so a plain ``crack-train`` run is the same code with no collective in it.

Backend: NCCL when the ranks train on CUDA, gloo on CPUs.  Each helper is one collective; every rank
must call the same ones in the same order, which is why decisions that only one rank can make
(validation, reading ``last.pt``) are made on rank 0 and broadcast.

BatchNorm: with the global batch split over ranks, a plain BatchNorm normalises each rank's share by
its own statistics, which a one-process run never does.  :func:`sync_batchnorm` makes the statistics
global: torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` (one all-reduce of the shifted
sums) elsewhere, since torch's refuses CPU tensors.  Both keep BatchNorm2d's state-dict keys, so a
checkpoint is the same file as a one-process run's.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from trainer.errors import ConfigError, TrainerError

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """Who this process is in the run; ``size == 1`` means no process group at all."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The rank, world size and local rank torchrun put in the environment (none: one process)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        rank, size, local = (int(env.get(k, "0")) for k in ENV_VARS)
    except ValueError as e:
        raise ConfigError(f"torchrun environment: {', '.join(f'{k}={env.get(k)!r}' for k in ENV_VARS)}: "
                          f"not integers ({e})") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"torchrun environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local} do not fit")
    return World(rank, size, local)


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> World:
    """The world of the process group this process has joined (one process when none)."""
    if not _joined():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def is_main() -> bool:
    """True on rank 0 and in a one-process run: the rank that validates, saves, logs and prints."""
    return current().is_main


def local_device(name: str) -> str:
    """This rank's device for ``--device NAME``; under torchrun ``auto`` and ``cuda`` mean cuda:LOCAL_RANK."""
    w = current() if _joined() else world_from_env()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return name
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here")
    if not w.distributed:
        return name
    if name != "cuda":
        raise ConfigError(f"device {name!r}: under torchrun each rank takes its own GPU (LOCAL_RANK); "
                          f"use --device cuda (or auto)")
    if w.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {w.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                          f"start at most that many processes per node (--nproc-per-node)")
    return f"cuda:{w.local_rank}"


@contextlib.contextmanager
def session(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[World]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); leave it on the way out.

    ``timeout_s`` bounds each collective: rank 0 validates and saves while the others wait at the
    next one, so it must exceed the longest validation (NCCL's own default is 10 minutes).
    """
    w = world_from_env()
    if not w.distributed or _joined():
        yield current() if _joined() else w
        return
    if not dist.is_available():
        raise ConfigError("torchrun started several processes but this torch has no torch.distributed")
    dev = local_device(device)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(dev.split(":")[1]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    w = current()
    log.info("event=process_group backend=%s rank=%d world_size=%d local_rank=%d device=%s",
             backend, w.rank, w.size, w.local_rank, dev)
    try:
        yield w
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave together: a rank that tears gloo down while another still talks to it can abort in
    # C++ ("terminate called without an active exception", SIGABRT; seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def _flag_device() -> str:
    return f"cuda:{torch.cuda.current_device()}" if current().backend == "nccl" else "cpu"


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true if it is true on any rank (an all-reduce of MAX); the flags as given alone."""
    if not current().distributed:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each figure over ranks (every rank gets it): one epoch's loss over the global batch."""
    if not current().distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_flag_device())
    dist.all_reduce(t)
    return {k: float(v) / current().size for k, v in zip(keys, t.tolist())}


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled: for small things and one-off state)."""
    if not current().distributed:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run on rank 0 and its result on every rank; an error there is raised on every rank.

    For what only rank 0 may do (validate, read ``last.pt``): without this, the other ranks would
    wait at the broadcast until the timeout when rank 0 fails.  A TrainerError travels as itself (the
    same message and exit status everywhere); any other error as a RuntimeError naming it.
    """
    if not current().distributed:
        return fn(*args)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args)
        except Exception as e:
            error = e
    portable = error if error is None or isinstance(error, TrainerError) else RuntimeError(
        f"rank 0 failed: {type(error).__name__}: {error}")
    result, shipped = broadcast((result, portable))
    if error is not None:
        raise error
    if shipped is not None:
        raise shipped
    return result


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
    w = current()
    if not w.distributed:
        return [obj]
    out: list[Any] | None = [None] * w.size if w.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def share(items: Sequence[Any]) -> list[Any]:
    """This rank's share of ``items``: every size-th one from its rank, so the shares union to all."""
    w = current()
    return list(items[w.rank::w.size])


# --- BatchNorm over the global batch -------------------------------------------------------------

class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is all_reduce(SUM) too: each rank's loss reaches every share."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over every rank's share (any backend).

    One all-reduce of [sum(x - k), sum((x - k)^2), count] per layer, with k the running mean (the
    same on every rank): shifting by it keeps E[x^2] - E[x]^2 from cancelling in float32 once the
    running mean has found the data.  Outside training, or alone, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _joined() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        k = self.running_mean.detach().float().view(1, c, 1, 1)
        d = xf - k
        count = torch.tensor([float(x.numel() // c)], device=x.device)
        stats = _SumOverRanks.apply(torch.cat([d.sum((0, 2, 3)), (d * d).sum((0, 2, 3)), count]))
        n = stats[-1]
        shift = stats[:c] / n
        mean = k.view(c) + shift
        var = (stats[c:2 * c] / n - shift * shift).clamp(min=0.0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            unbiased = var.detach() * (n / (n - 1).clamp(min=1.0))
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def sync_batchnorm(net: nn.Module, device: str) -> nn.Module:
    """``net`` with every BatchNorm2d computing its statistics over the global batch (same parameters)."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(net)


def data_parallel(net: nn.Module, device: str, sync_buffers: bool) -> nn.Module:
    """``net`` inside DistributedDataParallel: gradients averaged over ranks in each backward.

    ``sync_buffers=False`` when BatchNorm is synced: its running statistics are then equal on every
    rank already, and rank 0's need not be broadcast at every forward.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # torch 2.13 renamed broadcast_buffers (deprecated, warns) to forward_sync_buffers; older ones lack it.
    name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")
    return DistributedDataParallel(net, device_ids=ids, **{name: sync_buffers})


# --- Launching ------------------------------------------------------------------------------------

def torchrun_argv(nproc: int, module_args: Sequence[str], python: str | None = None) -> list[str]:
    """The command that runs ``python -m trainer.cli MODULE_ARGS`` on ``nproc`` ranks of this machine."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "trainer.cli", *module_args]


def launch(nproc: int, module_args: Sequence[str], cwd: Path | None = None) -> int:
    """Run ``crack-train MODULE_ARGS`` under torchrun on ``nproc`` local ranks; its exit status."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # the ranks import this checkout's trainer
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    for k in (*ENV_VARS, "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        env.pop(k, None)  # a launch from inside a rank must not inherit that rank's identity
    return subprocess.run(torchrun_argv(nproc, module_args), cwd=cwd, env=env).returncode
