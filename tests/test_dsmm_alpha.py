"""DSMM's temperature (learnq.regularizers.dsmm_alpha): dL/dα against finite differences and autograd, the
equilibrium α* against a closed form and against where SGD on α actually goes, the per-epoch trace, the recipe's
alpha_lr and the run's α plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from learnq.analysis.plots import PNG_SIGNATURE
from learnq.errors import ConfigError
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.run import run_recipe
from learnq.pipeline.train import TrainConfig, train
from learnq.pipeline.training import prepare_training
from learnq.regularizers import DSMM, dsmm_loss
from learnq.regularizers.dsmm_alpha import DSMMTrace, alpha_gradient, equilibrium_alpha, loss_at, plot_alpha_trace


def _weights(n: int, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * sigma


@pytest.mark.parametrize("alpha", [0.1, 1.3, 4.0, 12.0])
def test_alpha_gradient_matches_finite_differences_and_autograd(alpha):
    w = _weights(500, 0.15)
    h = 1e-5
    fd = (loss_at(w, alpha + h) - loss_at(w, alpha - h)) / (2 * h)
    # central differences in float64: truncation O(h² L''') ~ 1e-10, rounding ~ 1e-16 / h ~ 1e-11
    assert alpha_gradient(w, alpha) == pytest.approx(fd, abs=1e-8)
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    dsmm_loss(w, a).backward()
    # the same quantity through torch's softmax in float64: agreement to rounding
    assert alpha_gradient(w, alpha) == pytest.approx(a.grad.item(), rel=1e-9, abs=1e-13)
    assert loss_at(w, alpha) == pytest.approx(dsmm_loss(w, torch.tensor(alpha, dtype=torch.float64)).item(),
                                              rel=1e-12)


def test_two_point_weights_closed_form():
    # W = {-s, +s} (n/2 each): p = softmax(αW) puts σ(2αs) on +s, so Var_p = s²·sech²(αs), Var_q the same, and
    # dL/dα = 2 s² sech²(αs) - e^{-α}; α* is its root (found here by scipy's brentq on the closed form).
    s = 0.1
    w = torch.tensor([-s, s] * 50, dtype=torch.float64)

    def closed(a: float) -> float:
        return 2 * s**2 / math.cosh(a * s) ** 2 - math.exp(-a)

    for a in (0.5, 3.0, 9.0):
        assert alpha_gradient(w, a) == pytest.approx(closed(a), rel=1e-10)
    expected = brentq(closed, 0.1, 50.0, xtol=1e-14)
    assert equilibrium_alpha(w) == pytest.approx(expected, rel=1e-8)
    assert -math.log(2 * s**2) < expected < 4.2  # sech² < 1 lowers the spread, so α* is above -ln(2 s²) = 3.91


@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.02])
def test_equilibrium_is_a_minimum_and_near_the_gaussian_value(sigma):
    w = _weights(20_000, sigma)
    star = equilibrium_alpha(w)
    h = 1e-4
    fd = (loss_at(w, star + h) - loss_at(w, star - h)) / (2 * h)
    assert abs(fd) < 1e-9  # dL/dα = 0 there (bisection to 1e-10 relative)
    assert loss_at(w, star) < loss_at(w, star * 0.9) and loss_at(w, star) < loss_at(w, star * 1.1)
    # Gaussian weights: the tilted variances are σ², so α* ≈ -ln(2σ²); the sample of 20,000 and the finite-sample
    # tail (the tilt at α·σ up to 1) move it by under 2 %
    assert star == pytest.approx(-math.log(2 * sigma**2), rel=0.02)


def test_equilibrium_edge_cases_and_columns():
    # variance 1 > 1/2: L rises from α = 0 (L(0) = 1 < the hard range 2): α* = 0
    assert equilibrium_alpha(torch.tensor([-1.0, 1.0] * 10)) == 0.0
    assert equilibrium_alpha(torch.full((10,), 0.3)) == math.inf  # no spread: L = e^{-α} falls forever
    w = _weights(600, 0.1).reshape(300, 2)
    cols = [alpha_gradient(w[:, j], 2.0) for j in range(2)]
    assert alpha_gradient(w, 2.0, dims=2) == pytest.approx(sum(cols), rel=1e-12)
    star = equilibrium_alpha(w, dims=2)
    assert abs(alpha_gradient(w, star, dims=2)) < 1e-10


def test_sgd_on_alpha_alone_converges_to_the_equilibrium():
    """With the weights fixed, the training update of α (SGD, momentum 0.9, on λ·L) ends at equilibrium_alpha."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    layer.weight.requires_grad_(False)
    reg = DSMM(nn.Sequential(layer), strength=0.01, alpha_init=0.1)
    opt = torch.optim.SGD(reg.param_groups(50.0), lr=50.0, momentum=0.9)
    for _ in range(3000):
        opt.zero_grad()
        reg().backward()
        opt.step()
    star = equilibrium_alpha(layer.weight)
    # float32 loss: the gradient near α* is ~1e-7 noise against a curvature of e^{-α*} ~ 3e-3, so α lands within
    # ~1e-4 of α*; 1e-3 relative leaves room
    assert reg.alphas()["0"] == pytest.approx(star, rel=1e-3)


def _tiny_data(n: int = 96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def test_trace_records_alpha_and_equilibrium_every_epoch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    reg = DSMM(model, strength=0.01, alpha_init=0.1, alpha_lr=20.0)
    trace = DSMMTrace(reg)
    trace.record(0)
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, optimizer="sgd")
    train(model, _tiny_data(), config, extra_losses={"dsmm": reg}, extra_params=reg.param_groups(),
          callbacks=[trace], progress=False)
    assert [h["epoch"] for h in trace.history] == [0, 1, 2, 3]
    first, last = trace.history[0], trace.history[-1]
    assert first["alpha"] == {"0": pytest.approx(0.1), "2": pytest.approx(0.1)}
    assert last["alpha"] == reg.alphas()
    for name, module in reg.layers():
        assert last["alpha_star"][name] == pytest.approx(equilibrium_alpha(module.weight), rel=1e-9)
        assert last["grad"][name] == pytest.approx(alpha_gradient(module.weight, reg.alphas()[name]), rel=1e-9)
    assert last["alpha"]["0"] > 1.0  # alpha_lr 20 moved it (at the trainer's lr 0.05 it would stay near 0.1)
    png = plot_alpha_trace(trace.history, tmp_path / "a.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError, match="empty"):
        plot_alpha_trace([], tmp_path / "b.png")
    with pytest.raises(ConfigError, match="DSMM regularizer"):
        DSMMTrace(nn.Linear(2, 2))


def test_alpha_lr_option_and_param_groups():
    model = nn.Sequential(nn.Linear(4, 3))
    assert DSMM(model, alpha_lr=2.5).param_groups()[0]["lr"] == 2.5
    assert DSMM(model, alpha_lr=2.5).param_groups(0.1)[0]["lr"] == 0.1  # an explicit lr wins
    with pytest.raises(ConfigError, match="needs an lr"):
        DSMM(model).param_groups()
    with pytest.raises(ConfigError, match="alpha_lr"):
        DSMM(model, alpha_lr=-1.0)


RECIPE = """
name = "tiny-dsmm"
seed = 2

[data]
name = "digits"
limit = 200
calib_size = 32

[model]
name = "mlp"
args = { hidden = [12] }

[train]
epochs = 2
batch_size = 32
lr = 0.01
optimizer = "sgd"

[[regularizers]]
name = "dsmm"
options = { alpha_lr = 7.0 }

[[variants]]
method = "float"
"""


def test_recipe_alpha_lr_group_trace_in_metrics_and_png(tmp_path):
    recipe = parse_recipe(RECIPE)
    torch.manual_seed(0)
    parts = prepare_training(recipe, nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)),
                             "cpu")
    assert [g["lr"] for g in parts.kwargs["extra_params"]] == [7.0]
    assert parts.kwargs["callbacks"] == [parts.traces["dsmm"]] and len(parts.traces["dsmm"].history) == 1
    run_recipe(recipe, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    trace = metrics["training"]["regularizers"]["dsmm"]["trace"]
    assert [h["epoch"] for h in trace] == [0, 1, 2]
    assert trace[-1]["alpha"] == pytest.approx(metrics["training"]["regularizers"]["dsmm"]["alpha"])
    assert all(np.isfinite(v) for h in trace for v in h["alpha_star"].values())
    assert (tmp_path / "dsmm_alpha.png").read_bytes()[:8] == PNG_SIGNATURE
