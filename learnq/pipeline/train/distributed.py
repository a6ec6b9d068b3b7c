"""Data-parallel training across processes (PyTorch DistributedDataParallel), started by ``torchrun``.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each process's environment; ``setup_distributed``
reads them and joins the process group (gloo on CPU, nccl on CUDA, one GPU per process chosen by ``LOCAL_RANK``). The
group then stays for the life of the process (a second ``train`` in the same run reuses it) and is destroyed at
exit. Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``)
everything here is a no-op and the helpers answer rank 0 of 1.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from learnq.errors import ConfigError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun or unset it"
        ) from None


def world_size() -> int:
    """Number of training processes (1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (picks its GPU)."""
    return _env_int("LOCAL_RANK", rank())


def is_main_process() -> bool:
    """True in the one process that writes files and shows progress (rank 0)."""
    return rank() == 0


@dataclass
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ConfigError`` when it is malformed or not present on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1'...): {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def setup_distributed(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group when launched by torchrun with more than one process; pick this process's device.

    On CUDA each process gets ``cuda:LOCAL_RANK`` (whatever index ``device`` names) and the nccl backend; on CPU the
    gloo backend. A group that is already initialized is used as is; one this function starts is destroyed at exit.
    """
    dev = resolve_device(device)
    size = world_size()
    if size <= 1:
        return DistContext(rank=0, world_size=1, device=dev)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    if dev.type == "cuda":
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={index} but this machine has {torch.cuda.device_count()} CUDA devices; "
                "lower --nproc_per_node"
            )
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise ConfigError(f"WORLD_SIZE={size} but {var} is not set; launch with torchrun")
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
        atexit.register(_destroy_group)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (no-op with one process); returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over processes (for parameters DDP does not see: not in the model)."""
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ctx.world_size)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics...) to every process.

    DDP does this at the start of each forward, so after an epoch's last forward each process holds statistics of
    its own last batch; syncing before evaluation and checkpointing makes every process hold the same model.
    """
    if not ctx.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every process, indexed by rank (``[obj]`` with one process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process (every process waits for rank 0 to get here)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "DistContext",
    "world_size",
    "rank",
    "local_rank",
    "is_main_process",
    "resolve_device",
    "setup_distributed",
    "all_reduce_sum",
    "average_gradients",
    "broadcast_buffers",
    "gather_objects",
    "broadcast_object",
]
