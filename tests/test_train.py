"""Tests of learnq.pipeline.train: config validation, evaluation, the training step, seeding, exact resume, extra
losses and param groups, the two-step optimizer contract, schedules, clipping, progress bars and errors."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learnq.errors import CheckpointError, ConfigError, DataError
from learnq.pipeline.train import TrainConfig, evaluate, set_seed, train


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the CI machine has 2 shared cores, and bit-exact comparisons need a fixed count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int = 96, seed: int = 0, dim: int = 4) -> TensorDataset:
    """Two linearly separable Gaussian blobs around ±2·e0 (labels 0/1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, dim, generator=g) * 0.5
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    return TensorDataset(x, y)


def mlp(seed: int = 1, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def distance(a: nn.Module, b: nn.Module) -> float:
    """Euclidean distance between two models' parameter vectors."""
    return math.sqrt(sum((p - q).pow(2).sum().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)))


def drop_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# ---------------------------------------------------------------------------------------------------------- config
# fmt: off
BAD_FIELDS = [("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("lr", -1e-3), ("lr", float("nan")),
              ("optimizer", "rmsprop"), ("momentum", 1.0), ("weight_decay", -0.1), ("scheduler", "poly"), ("seed", -1),
              ("seed", True), ("device", "tpu9"), ("grad_clip", 0.0), ("lr_step_size", 0), ("lr_gamma", 0.0)]
# fmt: on


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_config_validate_names_the_field(field, value):
    config = TrainConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        config.validate()
    with pytest.raises(ConfigError, match=field):  # train validates first
        train(mlp(), blobs(8), config, progress=False)


def test_config_defaults_valid_and_dict_round_trip():
    config = TrainConfig(epochs=3, optimizer="sgd", scheduler="step", lr_step_size=2, grad_clip=1.5)
    config.validate()
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown training option.*'lrate'"):
        TrainConfig.from_dict({"lrate": 0.1})


def test_set_seed_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    set_seed(5)
    first = draw()
    set_seed(5)
    assert draw() == first
    set_seed(6)
    assert draw() != first
    with pytest.raises(ConfigError, match="seed"):
        set_seed(2**32)


# -------------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_hand_made_model():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # logits = inputs
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])  # predictions 0, 1, 0, 1: three right
    expected_loss = sum(
        math.log(math.exp(a) + math.exp(b)) - (a, b)[k] for (a, b), k in zip(x.tolist(), y.tolist(), strict=True)
    )
    model.train()
    out = evaluate(model, TensorDataset(x, y), batch_size=3)
    assert out["accuracy"] == 0.75 and out["n"] == 4
    assert out["loss"] == pytest.approx(expected_loss / 4, rel=1e-6)
    assert model.training  # mode restored
    assert evaluate(model, DataLoader(TensorDataset(x, y), batch_size=1)) == pytest.approx(out)
    soft = F.one_hot(y, 2).float()  # class probabilities give the same answer
    assert evaluate(model, TensorDataset(x, soft))["accuracy"] == 0.75
    with pytest.raises(DataError, match="empty"):
        evaluate(model, TensorDataset(x[:0], y[:0]))
    with pytest.raises(DataError, match="targets"):
        evaluate(model, TensorDataset(x, y.float()))


# ---------------------------------------------------------------------------------------------------- training step
def test_training_learns_a_separable_problem():
    result = train(
        mlp(), blobs(96), TrainConfig(epochs=8, batch_size=16, lr=1e-2), test_set=blobs(64, seed=1), progress=False
    )
    h = result.history
    assert [r["epoch"] for r in h] == list(range(1, 9))
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
    assert h[-1]["test_acc"] >= 0.95
    assert evaluate(result.model, blobs(64, seed=1))["loss"] == pytest.approx(h[-1]["test_loss"], rel=1e-6)


def test_full_batch_sgd_matches_hand_written_steps():
    data = blobs(32)
    model = mlp()
    ref = mlp()
    lr, epochs = 0.1, 3
    config = TrainConfig(epochs=epochs, batch_size=32, lr=lr, optimizer="sgd", momentum=0.0)
    result = train(model, data, config, progress=False)
    x, y = data.tensors
    losses = []
    for _ in range(epochs):
        loss = F.cross_entropy(ref(x), y)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads, strict=True):
                p -= lr * g
    for p, q in zip(result.model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert [r["train_loss"] for r in result.history] == pytest.approx(losses, rel=1e-5)
    assert result.model is model


def test_same_seed_same_weights_bit_for_bit():
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=3)
    a = train(mlp(dropout=0.3), blobs(), config, progress=False).model
    b = train(mlp(dropout=0.3), blobs(), config, progress=False).model
    c = train(mlp(dropout=0.3), blobs(), TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=4), progress=False).model
    assert same_weights(a, b)
    assert not same_weights(a, c)


# ----------------------------------------------------------------------------------------------------------- resume
def noisy_term(model: nn.Module) -> torch.Tensor:
    """Draws from Python's and NumPy's generators, so resume must restore them too."""
    scale = 1e-3 * (1.0 + random.random() + float(np.random.rand()))
    return scale * model[0].weight.pow(2).sum()


class Interrupt(Exception):
    pass


def interrupt_after(epoch: int):
    def callback(record: dict, model: nn.Module) -> None:
        if record["epoch"] == epoch:
            raise Interrupt

    return callback


def test_resume_after_interruption_is_bit_identical(tmp_path):
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=1e-2, scheduler="cosine")
    kwargs = dict(test_set=blobs(32, seed=1), extra_losses={"noisy": noisy_term}, progress=False)
    full = train(mlp(dropout=0.3), blobs(), config, **kwargs)
    with pytest.raises(Interrupt):
        train(mlp(dropout=0.3), blobs(), config, checkpoint_dir=str(tmp_path), callbacks=[interrupt_after(2)], **kwargs)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    resumed = train(mlp(seed=9, dropout=0.3), blobs(), config, checkpoint_dir=str(tmp_path), resume=True, **kwargs)
    assert same_weights(full.model, resumed.model)
    assert drop_seconds(resumed.history) == drop_seconds(full.history)
    assert not same_weights(full.model, mlp(seed=9, dropout=0.3))


def test_train_two_epochs_then_resume_to_four(tmp_path):
    def config(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=16, lr=0.05, optimizer="sgd", seed=2)

    full = train(mlp(dropout=0.2), blobs(), config(4), progress=False)
    first = train(mlp(dropout=0.2), blobs(), config(2), checkpoint_dir=str(tmp_path), progress=False)
    assert not same_weights(first.model, full.model)
    resumed = train(mlp(dropout=0.2), blobs(), config(4), checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert same_weights(resumed.model, full.model)
    assert drop_seconds(resumed.history) == drop_seconds(full.history)
    done = train(mlp(), blobs(), config(4), checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert same_weights(done.model, full.model)  # nothing left to train: the checkpoint's weights come back


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, scheduler="step", lr_step_size=1)
    result = train(mlp(), blobs(), config, checkpoint_dir=str(tmp_path), progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "history", "config"} <= state.keys()
    assert state["epoch"] == 2 and state["config"] == config.to_dict()
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in state["model"].items())
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (8, 4)
    assert state["scheduler"]["last_epoch"] == 2
    assert {"torch", "numpy", "python", "generators"} <= state["rng"][0].keys()
    assert not (tmp_path / "last.pt.tmp").exists()


def test_resume_errors(tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, scheduler="cosine")
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        train(mlp(), blobs(), config, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(mlp(), blobs(), config, checkpoint_dir=str(tmp_path / "none"), resume=True, progress=False)
    train(mlp(), blobs(), config, checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"lr: 0\.01 -> 0\.02"):
        train(
            mlp(),
            blobs(),
            TrainConfig(**{**config.to_dict(), "lr": 2e-2}),
            checkpoint_dir=str(tmp_path),
            resume=True,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="epochs=2"):  # a cosine schedule cannot be stretched
        train(
            mlp(),
            blobs(),
            TrainConfig(**{**config.to_dict(), "epochs": 3}),
            checkpoint_dir=str(tmp_path),
            resume=True,
            progress=False,
        )
    wider = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Dropout(0.0), nn.Linear(9, 2))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(wider, blobs(), config, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="cannot read"):
        train(mlp(), blobs(), config, checkpoint_dir=str(tmp_path), resume=True, progress=False)


def test_unpicklable_group_value_is_refused_at_save(tmp_path):
    t = torch.zeros(1, requires_grad=True)
    with pytest.raises(CheckpointError, match="tag"):
        train(
            mlp(),
            blobs(),
            TrainConfig(epochs=1, batch_size=32),
            extra_params=[{"params": [t], "tag": object()}],
            checkpoint_dir=str(tmp_path),
            progress=False,
        )


# --------------------------------------------------------------------------------------- extra losses and groups
def test_extra_loss_in_history_and_its_gradient_flows():
    seen: list[float] = []

    def l2(model: nn.Module) -> torch.Tensor:
        value = 0.05 * sum(p.pow(2).sum() for p in model.parameters())
        seen.append(value.item())
        return value

    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, optimizer="sgd")
    plain = train(mlp(), blobs(), config, progress=False)
    shrunk = train(mlp(), blobs(), config, extra_losses={"l2": l2}, progress=False)
    norm = lambda m: sum(p.pow(2).sum() for p in m.parameters()).item()  # noqa: E731
    assert norm(shrunk.model) < norm(plain.model) - 0.05
    assert plain.history[0]["extra"] == {}
    assert len(seen) == 6  # 96 samples / 32 per step · 2 epochs
    assert shrunk.history[0]["extra"]["l2"] == pytest.approx(np.mean(seen[:3]), rel=1e-6)
    assert shrunk.history[1]["extra"]["l2"] == pytest.approx(np.mean(seen[3:]), rel=1e-6)


def test_extra_params_group_is_optimized_with_its_own_settings():
    temperature = torch.tensor(0.0, requires_grad=True)
    model = mlp()
    frozen_by_lr = model[0].bias
    before = frozen_by_lr.detach().clone()
    groups = [
        {"params": [temperature], "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        {"params": [frozen_by_lr], "lr": 0.0},  # a model parameter: moves out of the model's group
    ]
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)
    result = train(
        model,
        blobs(),
        config,
        extra_losses={"t": lambda m: (temperature - 3.0) ** 2},
        extra_params=groups,
        progress=False,
    )
    steps = 6
    assert temperature.item() == pytest.approx(3.0 + (0.0 - 3.0) * (1 - 2 * 0.1) ** steps, rel=1e-5)
    assert torch.equal(result.model[0].bias, before)
    assert not torch.equal(result.model[0].weight, mlp()[0].weight)


class TwoStep:
    """A SAM-like wrapper: gradient at w, ascend by rho·g/|g|, gradient there, come back, base step."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, rho: float = 0.05) -> None:
        self.optimizer, self.model, self.rho, self.calls = optimizer, model, rho, 0

    def step(self, closure):
        self.calls += 1
        loss = closure()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
        eps = [self.rho * p.grad / norm for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        closure()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
        self.optimizer.step()
        return loss


def test_two_step_wrapper_gets_a_closure_it_can_call_twice():
    data = blobs(32)
    lr, rho, epochs = 0.1, 0.05, 3
    wrappers: list[TwoStep] = []

    def wrap(optimizer, model):
        wrappers.append(TwoStep(optimizer, model, rho))
        return wrappers[-1]

    config = TrainConfig(epochs=epochs, batch_size=32, lr=lr, optimizer="sgd", momentum=0.0)
    result = train(mlp(), data, config, optimizer_wrapper=wrap, progress=False)
    assert wrappers[0].calls == epochs and wrappers[0].model is result.model
    ref = mlp()
    x, y = data.tensors
    first_losses = []
    for _ in range(epochs):  # hand-written SAM, full batch
        params = list(ref.parameters())
        loss = F.cross_entropy(ref(x), y)
        first_losses.append(loss.item())
        g = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
        eps = [rho * gi / norm for gi in g]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        g2 = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
        with torch.no_grad():
            for p, e, gi in zip(params, eps, g2, strict=True):
                p.sub_(e)
                p.sub_(lr * gi)
    for p, q in zip(result.model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    # the epoch's loss is the loss at the step's weights (first closure call), not at the ascended ones
    assert [r["train_loss"] for r in result.history] == pytest.approx(first_losses, rel=1e-5)


def test_wrapper_that_never_calls_the_closure_is_an_error():
    class Lazy:
        def __init__(self, optimizer, model):
            self.optimizer = optimizer

        def step(self, closure=None):
            self.optimizer.step()

    with pytest.raises(ConfigError, match="closure"):
        train(mlp(), blobs(), TrainConfig(epochs=1, batch_size=32), optimizer_wrapper=Lazy, progress=False)


# ------------------------------------------------------------------------------------ schedules, clipping, errors
def test_schedules_follow_their_formulas():
    cosine = train(mlp(), blobs(), TrainConfig(epochs=4, batch_size=96, lr=0.1, scheduler="cosine"), progress=False)
    assert [r["lr"] for r in cosine.history] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    )
    step = TrainConfig(epochs=4, batch_size=96, lr=0.1, scheduler="step", lr_step_size=2, lr_gamma=0.5)
    assert [r["lr"] for r in train(mlp(), blobs(), step, progress=False).history] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05]
    )


def test_grad_clip_bounds_the_step():
    model, start = mlp(), mlp()
    config = TrainConfig(epochs=1, batch_size=96, lr=0.1, optimizer="sgd", momentum=0.0, grad_clip=1e-3)
    train(model, blobs(), config, progress=False)
    assert distance(model, start) == pytest.approx(0.1 * 1e-3, rel=1e-3)  # clip_grad_norm_ divides by (norm + 1e-6)
    unclipped = mlp()
    train(unclipped, blobs(), TrainConfig(**{**config.to_dict(), "grad_clip": None}), progress=False)
    assert distance(unclipped, start) > 10 * distance(model, start)


def test_data_errors():
    with pytest.raises(DataError, match="train_set is empty"):
        train(mlp(), TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), TrainConfig(), progress=False)
    with pytest.raises(DataError, match="test_set is empty"):
        train(mlp(), blobs(), TrainConfig(), test_set=TensorDataset(torch.zeros(0, 4)), progress=False)
    x, y = blobs().tensors
    with pytest.raises(DataError, match="targets"):
        train(mlp(), TensorDataset(x, y.float()), TrainConfig(epochs=1), progress=False)
    with pytest.raises(DataError, match="pair"):
        train(mlp(), TensorDataset(x, y, y), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="scalar"):
        train(mlp(), blobs(), TrainConfig(epochs=1), extra_losses={"v": lambda m: m[0].weight}, progress=False)


def test_divergence_is_reported():
    with pytest.raises(ConfigError, match="diverged in epoch 1.*'nan'"):
        train(
            mlp(),
            blobs(),
            TrainConfig(epochs=2),
            extra_losses={"nan": lambda m: m[0].weight.sum() * float("nan")},
            progress=False,
        )


# ------------------------------------------------------------------------------------------- callbacks, progress
def test_callbacks_stop_and_do_not_change_the_randomness():
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2)
    plain = train(mlp(dropout=0.3), blobs(), config, progress=False)
    records = []

    def greedy(record, model):  # draws from torch's generator, which training uses for dropout
        records.append(record)
        torch.rand(100)

    observed = train(mlp(dropout=0.3), blobs(), config, callbacks=[greedy], progress=False)
    assert same_weights(plain.model, observed.model)
    assert drop_seconds(records) == drop_seconds(observed.history)
    stopped = train(mlp(), blobs(), config, callbacks=[lambda r, m: r["epoch"] == 2], progress=False)
    assert len(stopped.history) == 2


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    config = TrainConfig(epochs=1, batch_size=32)
    train(mlp(), blobs(), config, progress=True)  # captured stderr is not a TTY
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(mlp(), blobs(), config, progress=False)
    assert capsys.readouterr().err == ""
    train(mlp(), blobs(), config, progress=True)
    assert "train" in capsys.readouterr().err
