"""The trainer: seeded, checkpointed every epoch, exactly resumable, data-parallel under torchrun.

Usage::

    from learnq.pipeline.train import TrainConfig, train, evaluate
    result = train(model, splits.train, TrainConfig(epochs=10, lr=1e-3), test_set=splits.test,
                   extra_losses={"kure": kure}, checkpoint_dir="runs/a")
    result.history[-1]["test_acc"]

Exact resume: ``train(..., checkpoint_dir="runs/a", resume=True)`` continues from ``runs/a/last.pt`` (written after
every epoch, tensors and plain values only, read with ``weights_only=True``) and ends with the same weights, bit for
bit, as a run that was never interrupted (same machine, same thread count, same number of processes).

Data-parallel training (PyTorch DistributedDataParallel) on N processes of one machine::

    torchrun --standalone --nproc_per_node=N -m learnq train RECIPE

torchrun starts N copies of the command and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``train`` sees them,
joins the process group (gloo on CPU, nccl on CUDA with one GPU per process: ``cuda:LOCAL_RANK``), wraps the model in
DistributedDataParallel and reads the data through a DistributedSampler seeded with ``config.seed``.
``config.batch_size`` is the global batch: each process takes ``batch_size / N`` samples of a step, rank ``r`` the
samples at positions ``r, r+N, r+2N...`` of the epoch's permutation, so a step sees the same samples as a
one-process step with the same batch (when N divides the data set size; otherwise the sampler repeats a few samples
to even out the ranks). Only rank 0 writes the checkpoint and shows progress bars; every rank returns the same model.
Use ``is_main_process()`` to write files only once from your own code.
"""

from __future__ import annotations

from learnq.evaluation import evaluate
from learnq.pipeline.train.config import Callback, LossTerm, TrainConfig, TrainResult
from learnq.pipeline.train.distributed import is_main_process, rank, world_size
from learnq.pipeline.train.loop import train
from learnq.pipeline.train.optim import build_optimizer, build_scheduler
from learnq.pipeline.train.seeding import set_seed

__all__ = [
    "TrainConfig",
    "TrainResult",
    "LossTerm",
    "Callback",
    "train",
    "evaluate",
    "set_seed",
    "build_optimizer",
    "build_scheduler",
    "is_main_process",
    "world_size",
    "rank",
]
