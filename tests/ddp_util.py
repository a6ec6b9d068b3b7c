"""Launching a test's worker in several gloo processes and reading back what each rank saved.

A worker is a module-level function ``worker(rank, world, port, out_dir)`` that saves its results to
``out_dir/rank<R>.pt`` (tensors and plain values only: they are read back with ``weights_only=True``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[[int, int, int, str], None], world: int = 2) -> list[Any]:
    """Run ``worker`` in ``world`` processes; return what each rank saved, in rank order."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), out), nprocs=world, join=True)
        return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in range(world)]
