"""Data-parallel training (learnq.pipeline.train under torchrun's environment): two CPU processes (gloo) train a tiny
model and end with identical weights, equal to one process training with the same global batch; a run interrupted
and resumed under two processes ends bit-identical to an uninterrupted one.

This file is also the worker script: ``python tests/test_ddp.py OUT_DIR`` with torchrun's environment variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) runs the three trainings (one with a
checkpoint, one with BatchNorm, the resume scenario) and saves ``OUT_DIR/rankR.pt`` and ``OUT_DIR/resumeR.pt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from learnq.pipeline.train import TrainConfig, is_main_process, train, world_size

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# SGD with momentum; 64 samples, global batch 16: 4 steps per epoch, 8 samples per process and step
CONFIG = dict(epochs=2, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.9, seed=0)


class TempNet(nn.Module):
    """An MLP whose logits are divided by a temperature that is not a parameter of the model: DDP does not see it,
    so the trainer must average its gradient itself."""

    def __init__(self, temperature: torch.Tensor) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self._temperature = [temperature]  # a list: not registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) / self._temperature[0]


def build() -> tuple[TempNet, torch.Tensor, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    torch.manual_seed(0)
    temperature = torch.tensor(1.5, requires_grad=True)
    return TempNet(temperature), temperature, TensorDataset(x, y), TensorDataset(x[:30], y[:30])


def run_training(checkpoint_dir: Path, perturb: bool = False) -> tuple[TempNet, torch.Tensor, list[dict]]:
    model, temperature, train_set, test_set = build()
    if perturb:  # DistributedDataParallel starts every process from rank 0's weights
        with torch.no_grad():
            model.body[0].weight.add_(0.5)
    result = train(
        model,
        train_set,
        TrainConfig(**CONFIG),
        test_set=test_set,
        extra_losses={"l2": lambda m: 1e-2 * m.body[0].weight.pow(2).sum()},
        extra_params=[{"params": [temperature], "lr": 0.05, "momentum": 0.0}],
        checkpoint_dir=str(checkpoint_dir),
        progress=False,
    )
    return model, temperature, result.history


def train_batchnorm() -> nn.Module:
    """A second training in the same processes (the process group is reused) of a model with BatchNorm buffers."""
    _, _, train_set, _ = build()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    train(model, train_set, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False)
    return model


class Interrupt(Exception):
    pass


def interrupt_after_two(record: dict, model: nn.Module) -> None:
    if record["epoch"] == 2:
        raise Interrupt


def resume_worker(out_dir: Path) -> None:
    """A 4-epoch run with dropout and Adam, then the same run interrupted after epoch 2 and resumed."""
    rank = int(os.environ["RANK"])
    _, _, train_set, _ = build()
    config = TrainConfig(**{**CONFIG, "epochs": 4, "optimizer": "adam", "lr": 1e-2, "scheduler": "cosine"})

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))

    full = train(fresh(), train_set, config, progress=False).model
    try:
        train(
            fresh(),
            train_set,
            config,
            checkpoint_dir=str(out_dir / "cut"),
            callbacks=[interrupt_after_two],
            progress=False,
        )
    except Interrupt:
        pass
    resumed = train(fresh(), train_set, config, checkpoint_dir=str(out_dir / "cut"), resume=True, progress=False).model
    torch.save({"full": full.state_dict(), "resumed": resumed.state_dict()}, out_dir / f"resume{rank}.pt")


def worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    model, temperature, history = run_training(out_dir / "ckpt", perturb=rank == 1)
    bn_model = train_batchnorm()
    resume_worker(out_dir)
    torch.save(
        {
            "bn_state": bn_model.state_dict(),
            "state": model.state_dict(),
            "temperature": temperature.detach(),
            "history": history,
            "main": is_main_process(),
            "world": world_size(),
        },
        out_dir / f"rank{rank}.pt",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out_dir: Path) -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(WORLD),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(out_dir)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{out}"


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory) -> Path:
    """One launch of two processes for all the checks below (starting processes is the slow part)."""
    out = tmp_path_factory.mktemp("ddp")
    launch(out)
    return out


def test_two_processes_match_one_process(ddp_dir, tmp_path, monkeypatch):
    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["main"] for r in ranks] == [True, False] and [r["world"] for r in ranks] == [WORLD, WORLD]
    # every process holds the same model and the same (reduced) history
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert torch.equal(ranks[0]["temperature"], ranks[1]["temperature"])
    for key, value in ranks[0]["bn_state"].items():  # BatchNorm running statistics too
        assert torch.equal(value, ranks[1]["bn_state"][key]), key
    for a, b in zip(ranks[0]["history"], ranks[1]["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    # ... equal to one process with the same global batch (same samples in each step)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, temperature, history = run_training(tmp_path / "single")
    finally:
        torch.set_num_threads(before)
    start, start_t, _, _ = build()
    assert not torch.allclose(start.body[0].weight, model.body[0].weight, atol=1e-2)  # it did train
    assert temperature.item() != pytest.approx(start_t.item(), abs=1e-3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    torch.testing.assert_close(ranks[0]["temperature"], temperature.detach(), atol=1e-6, rtol=1e-5)
    for dist_rec, one_rec in zip(ranks[0]["history"], history, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert dist_rec[key] == pytest.approx(one_rec[key], rel=1e-5, abs=1e-6), key
        assert dist_rec["extra"]["l2"] == pytest.approx(one_rec["extra"]["l2"], rel=1e-5)
    # rank 0 wrote the checkpoint, with every process's RNG state
    saved = torch.load(ddp_dir / "ckpt" / "last.pt", weights_only=True)
    assert saved["world_size"] == WORLD and len(saved["rng"]) == WORLD and saved["epoch"] == CONFIG["epochs"]
    for key, value in saved["model"].items():
        assert torch.equal(value, ranks[0]["state"][key])


def test_resume_under_ddp_is_bit_identical(ddp_dir):
    runs = [torch.load(ddp_dir / f"resume{r}.pt", weights_only=True) for r in range(WORLD)]
    for run in runs:
        for key, value in run["full"].items():
            assert torch.equal(value, run["resumed"][key]), key
    saved = torch.load(ddp_dir / "cut" / "last.pt", weights_only=True)
    # each process drew its own dropout masks: their RNG states differ and both were saved
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])


@pytest.mark.slow
def test_under_torchrun_standalone(tmp_path):
    """The documented launcher itself: ``torchrun --standalone --nproc_per_node=2`` (slower: an elastic agent)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", __file__]
    done = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["main"] for r in ranks] == [True, False]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
