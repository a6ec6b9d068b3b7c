"""The training loop: seeded, checkpointed every epoch, exactly resumable, data-parallel under torchrun.

One step is one call of ``step(closure)`` on the optimizer, or on ``optimizer_wrapper(optimizer, model)`` when one
is given. The closure zeroes the gradients, runs the model, adds the extra loss terms to the task loss, calls
``backward``, averages gradients of parameters DDP does not see, clips, and returns the loss. Plain torch optimizers
call it once; two-step optimizers such as ASAM (Kwon et al. 2021, Alg. 1) call it twice (at ``w`` and at the
ascended ``w + ε``). The epoch's statistics come from the first call of each step: the loss at the step's weights.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from learnq.errors import CheckpointError, ConfigError, DataError
from learnq.evaluation import eval_sums, metrics_from_sums, split_batch, task_loss
from learnq.pipeline.train import distributed as D
from learnq.pipeline.train.config import Callback, LossTerm, TrainConfig, TrainResult
from learnq.pipeline.train.optim import build_optimizer, build_scheduler
from learnq.pipeline.train.seeding import capture_rng_state, make_generator, restore_rng_state, set_seed
from learnq.pipeline.train.state import restore_training, save_state

_EVAL_BATCH = 256


class _Closure:
    """One step's closure: zero grads, forward, task loss + extra terms, backward, sync, clip. Keeps the first call's
    (loss, correct count, extra terms): the statistics at the step's weights."""

    def __init__(self, trainer: _Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
        self.trainer, self.x, self.y = trainer, x, y
        self.first: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None

    def __call__(self) -> torch.Tensor:
        t = self.trainer
        t.optimizer.zero_grad(set_to_none=True)
        loss, correct = task_loss(t.net(self.x), self.y)
        total = loss
        terms = []
        for name, fn in t.extras.items():
            term = fn(t.model)
            if not isinstance(term, torch.Tensor) or term.numel() != 1:
                shape = tuple(term.shape) if isinstance(term, torch.Tensor) else type(term).__name__
                raise ConfigError(f"extra loss {name!r} must return a scalar tensor, got {shape}")
            term = term.reshape(())
            terms.append(term.detach())
            total = total + term
        total.backward()
        D.average_gradients(t.external, t.ctx)
        if t.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(t.params, t.config.grad_clip)
        if self.first is None:
            self.first = (loss.detach(), correct, terms)
        return total.detach()


def train(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    *,
    test_set: Dataset | None = None,
    extra_losses: Mapping[str, LossTerm] | None = None,
    extra_params: list[dict] | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    optimizer_wrapper: Callable[[torch.optim.Optimizer, nn.Module], Any] | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> TrainResult:
    """Train ``model`` (logits out) with cross-entropy on ``train_set`` ((input, target) pairs) as ``config`` says.

    ``extra_losses``: name -> fn(model) -> scalar, added to the task loss at every step; each term's epoch mean goes in
    the history. ``extra_params``: optimizer param groups appended after the model's. ``optimizer_wrapper``: called as
    ``wrapper(optimizer, model)``; the trainer then calls ``wrapped.step(closure)`` (the closure zeroes grads,
    recomputes the loss, calls backward and returns the loss) and checkpoints the wrapped base optimizer, so the
    wrapper must keep no state of its own between steps. ``checkpoint_dir``: ``last.pt`` written after every epoch
    (rank 0 only); ``resume=True`` continues from it and ends with bit-identical weights to an uninterrupted run.
    Under torchrun the model is wrapped in DistributedDataParallel and ``config.batch_size`` is the global batch.
    The returned ``TrainResult.model`` is ``model`` itself (never the DDP wrapper), trained, on ``config.device``.
    """
    config.validate()
    extras = dict(extra_losses or {})
    for name, fn in extras.items():
        if not isinstance(name, str) or not callable(fn):
            raise ConfigError(f"extra_losses must map names (str) to callables fn(model) -> scalar; got {name!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir (the folder holding last.pt)")
    _check_dataset(train_set, "train_set")
    if test_set is not None:
        _check_dataset(test_set, "test_set")
    ctx = D.setup_distributed(config.device)
    trainer = _Trainer(model, train_set, config, ctx, test_set, extras, extra_params, optimizer_wrapper, progress)
    return trainer.fit(checkpoint_dir, resume, list(callbacks or []))


class _Trainer:
    """Everything one run holds: model (and its DDP wrapper), optimizer (and its wrapper), schedule, data, RNGs."""

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        config: TrainConfig,
        ctx: D.DistContext,
        test_set: Dataset | None,
        extras: dict[str, LossTerm],
        extra_params: list[dict] | None,
        optimizer_wrapper: Callable | None,
        progress: bool,
    ) -> None:
        if config.batch_size % ctx.world_size:
            raise ConfigError(
                f"batch_size={config.batch_size} (the global batch) must be divisible by the {ctx.world_size} processes"
            )
        set_seed(config.seed + ctx.rank)
        self.config, self.ctx, self.test_set, self.extras = config, ctx, test_set, extras
        self.model = model.to(ctx.device)  # the model itself; self.net is what the forward pass goes through
        self.optimizer, self.external = build_optimizer(self.model, config, extra_params)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.stepper = self.optimizer if optimizer_wrapper is None else optimizer_wrapper(self.optimizer, self.model)
        if not callable(getattr(self.stepper, "step", None)):
            raise ConfigError("optimizer_wrapper must return an object with a step(closure) method")
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # rank r takes positions r, r+N, ... of the epoch's permutation (torch.randperm seeded with seed + epoch)
        self.sampler = DistributedSampler(
            train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=False
        )
        self.loader_gen = make_generator(config.seed)
        self.loader = DataLoader(
            train_set,
            batch_size=config.batch_size // ctx.world_size,
            sampler=self.sampler,
            generator=self.loader_gen,
            pin_memory=ctx.device.type == "cuda",
        )
        self.net: nn.Module = self.model
        self.show = progress and ctx.is_main and sys.stderr.isatty()

    def fit(self, checkpoint_dir: str | None, resume: bool, callbacks: list[Callback]) -> TrainResult:
        config, ctx = self.config, self.ctx
        history: list[dict] = []
        start = 0
        if resume and checkpoint_dir is not None:
            start, history = restore_training(
                checkpoint_dir, config, ctx, self.model, self.optimizer, self.scheduler, self.loader_gen
            )
        if ctx.enabled:  # after loading: DDP starts every process from rank 0's weights and buffers
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=config.ddp_find_unused_parameters,
            )
        bar = tqdm(total=config.epochs, initial=start, desc="train", unit="epoch", disable=not self.show)
        try:
            for epoch in range(start, config.epochs):
                record = self.train_epoch(epoch)
                history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4g}", acc=f"{record['train_acc']:.3f}")
                rng = capture_rng_state({"loader": self.loader_gen})
                if checkpoint_dir is not None:
                    self.save(checkpoint_dir, epoch + 1, history, rng)
                if callbacks:
                    stop = False
                    for cb in callbacks:
                        stop = cb({**record, "extra": dict(record["extra"])}, self.model) is True or stop
                    restore_rng_state(rng, {"loader": self.loader_gen})  # callbacks must not change the randomness
                    if D.broadcast_object(stop, ctx):
                        break
        finally:
            bar.close()
        return TrainResult(history=history, model=self.model, resumed_from_epoch=start if resume else None)

    def train_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        config, ctx = self.config, self.ctx
        self.sampler.set_epoch(epoch)
        self.net.train()
        lr = float(self.optimizer.param_groups[0]["lr"])
        # [sum of loss·n, correct, n, steps, sum over steps of each extra term]
        sums = torch.zeros(4 + len(self.extras), dtype=torch.float64, device=ctx.device)
        desc = f"epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(self.loader, desc=desc, unit="batch", leave=False, disable=not self.show)
        for i, batch in enumerate(bar):
            x, y = split_batch(batch)
            closure = _Closure(self, x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True))
            self.stepper.step(closure)
            if closure.first is None:
                raise ConfigError(
                    "the optimizer's step(closure) never called the closure; an optimizer_wrapper must call "
                    "closure() (zero grads, forward, backward) before stepping"
                )
            loss, correct, terms = closure.first
            n = x.shape[0]
            sums[0] += loss.double() * n
            sums[1] += correct
            sums[2] += n
            sums[3] += 1
            for k, term in enumerate(terms):
                sums[4 + k] += term.double()
            if self.show and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        bar.close()
        if self.scheduler is not None:
            self.scheduler.step()
        totals = D.all_reduce_sum(sums, ctx).tolist()
        D.broadcast_buffers(self.model, ctx)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": totals[0] / totals[2],
            "train_acc": totals[1] / totals[2],
            "test_loss": None,
            "test_acc": None,
            "extra": {name: totals[4 + k] / totals[3] for k, name in enumerate(self.extras)},
            "lr": lr,
        }
        bad = [k for k, v in [("train_loss", record["train_loss"]), *record["extra"].items()] if not math.isfinite(v)]
        if bad:
            raise ConfigError(
                f"training diverged in epoch {epoch + 1}: {bad} not finite; lower lr (now {config.lr}) or set "
                "grad_clip (the checkpoint of the previous epoch is left as it was)"
            )
        if self.test_set is not None:
            metrics = _evaluate_sharded(self.model, self.test_set, ctx)
            record["test_loss"], record["test_acc"] = metrics["loss"], metrics["accuracy"]
        record["seconds"] = time.perf_counter() - t0
        return record

    def save(self, checkpoint_dir: str, epoch: int, history: list[dict], rng: dict) -> None:
        """Rank 0 writes ``last.pt`` with every process's RNG state; every process waits until it is on disk (a
        resume right after must read this one) and raises if writing failed."""
        rngs = D.gather_objects(rng, self.ctx)
        error = None
        if self.ctx.is_main:
            state = {
                "epoch": epoch,
                "config": self.config.to_dict(),
                "world_size": self.ctx.world_size,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": rngs,
                "history": history,
            }
            try:
                save_state(checkpoint_dir, state)
            except CheckpointError as exc:
                error = str(exc)
        error = D.broadcast_object(error, self.ctx)
        if error is not None:
            raise CheckpointError(error)


def _evaluate_sharded(raw: nn.Module, dataset: Dataset, ctx: D.DistContext) -> dict:
    """Each process evaluates every world_size-th sample; the sums are added over processes."""
    n = len(dataset)  # type: ignore[arg-type]
    shard = dataset if not ctx.enabled else Subset(dataset, range(ctx.rank, n, ctx.world_size))
    was_training = raw.training
    raw.eval()
    try:
        sums = eval_sums(raw, DataLoader(shard, batch_size=_EVAL_BATCH, shuffle=False), ctx.device)
    finally:
        raw.train(was_training)
    return metrics_from_sums(D.all_reduce_sum(sums, ctx))


def _check_dataset(dataset: Dataset, name: str) -> None:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{name} must be a map-style Dataset with a length (a TensorDataset...)") from None
    if size == 0:
        raise DataError(f"{name} is empty; give at least one (input, target) pair")


__all__ = ["train"]
