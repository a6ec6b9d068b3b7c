"""Finite-difference Hessian, Gaussian curvature (LAPQ Eq. 9), the |H| plot, and the Hessian w.r.t. the steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from learnq.analysis.hessian import (
    StepHessian,
    finite_difference_hessian,
    gaussian_curvature,
    plot_hessian,
    step_hessian,
)
from learnq.analysis.plots import PNG_SIGNATURE
from learnq.errors import ConfigError
from learnq.ptq.api import quantize
from learnq.ptq.calib_loss import step_coordinates


def test_hessian_of_an_exact_quadratic_is_recovered():
    A = np.array([[4.0, 1.5, -0.5], [1.5, 3.0, 0.25], [-0.5, 0.25, 2.0]])
    b = np.array([0.3, -1.0, 2.0])
    calls = []

    def f(x):
        calls.append(1)
        return 0.5 * x @ A @ x + b @ x + 7.0

    x0 = np.array([0.5, -0.2, 1.0])
    H, g, f0 = finite_difference_hessian(f, x0, [0.1, 0.05, 0.2])
    assert np.allclose(H, A, rtol=1e-8, atol=1e-8)
    assert np.allclose(g, A @ x0 + b, rtol=1e-9, atol=1e-9)
    assert f0 == pytest.approx(f(x0))
    assert len(calls) == 1 + 1 + 2 * 3 + 2 * 3 * 2  # + the check call above
    assert np.array_equal(H, H.T)


def test_hessian_rejects_bad_steps():
    with pytest.raises(ConfigError):
        finite_difference_hessian(lambda x: float(x @ x), [1.0, 2.0], [0.1, 0.0])
    with pytest.raises(ConfigError):
        finite_difference_hessian(lambda x: 0.0, [], 0.1)


def test_gaussian_curvature_by_hand():
    H = np.array([[2.0, 1.0], [1.0, 3.0]])  # det 5
    g = np.array([1.0, 2.0])  # |g|² = 5
    assert gaussian_curvature(H, g) == pytest.approx(5.0 / 36.0, rel=1e-12)
    assert gaussian_curvature(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), torch.zeros(2)) == pytest.approx(-3.0)
    assert gaussian_curvature(np.ones((2, 2)), np.zeros(2)) == 0.0
    # tiny determinants (LAPQ reports 6.7e-25 at 4 bits) do not underflow to an error
    assert gaussian_curvature(np.eye(30) * 0.1, np.zeros(30)) == pytest.approx(1e-30, rel=1e-9)
    with pytest.raises(ConfigError):
        gaussian_curvature(np.eye(2), np.zeros(3))


def test_plot_hessian_writes_a_png(tmp_path):
    H = np.array([[2.0, -0.1, 0.0], [-0.1, 1.0, 1e-3], [0.0, 1e-3, 0.5]])
    out = plot_hessian(H, tmp_path / "h" / "hessian.png", names=["a", "b", "c"])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError):
        plot_hessian(H, tmp_path / "x.png", names=["a"])
    with pytest.raises(ConfigError):
        plot_hessian(np.ones((2, 3)), tmp_path / "y.png")


@torch.no_grad()
def _full_loss(model: nn.Module, calib: TensorDataset, steps: dict[str, float]) -> float:
    coords = {c.name: c for c in step_coordinates(model)}
    saved = {n: c.get() for n, c in coords.items()}
    for name, step in steps.items():
        coords[name].set(torch.tensor([step]) / coords[name].step_factor())
    x, y = calib.tensors
    value = float(F.cross_entropy(model(x), y))
    for n, c in coords.items():
        c.set(saved[n])
    return value


def test_step_hessian_of_a_quantized_model():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2))
    calib = TensorDataset(x, y)
    model = quantize(net, calib, method="mse", wbits=2, abits=3, granularity="tensor", progress=False).model
    names = ["2.input", "2.weight", "4.weight"]
    res = step_hessian(model, calib, names=names, rel_step=0.1)
    assert isinstance(res, StepHessian) and res.names == names
    assert res.loss_evals == 1 + 2 * 3 + 2 * 3 * 2
    assert res.hessian.shape == (3, 3) and np.array_equal(res.hessian, res.hessian.T)
    assert res.curvature == pytest.approx(gaussian_curvature(res.hessian, res.grad))
    # the model keeps its steps; the entries are central differences of the full model's loss
    coords = {c.name: c for c in step_coordinates(model)}
    now = np.array([float(coords[n].get()[0] * coords[n].step_factor()[0]) for n in names])
    assert np.allclose(now, res.steps, rtol=1e-6)
    d, h = res.steps[1], res.h[1]
    f0 = _full_loss(model, calib, {})
    assert res.loss == pytest.approx(f0, rel=1e-5)
    hand = (_full_loss(model, calib, {"2.weight": d + h}) - 2 * f0 + _full_loss(model, calib, {"2.weight": d - h}))
    assert res.hessian[1, 1] == pytest.approx(hand / h**2, rel=1e-3, abs=1e-6)
    a, ha = res.steps[0], res.h[0]
    corners = [_full_loss(model, calib, {"2.input": a + sa * ha, "4.weight": res.steps[2] + sb * res.h[2]})
               for sa, sb in [(1, 1), (1, -1), (-1, 1), (-1, -1)]]
    cross = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * ha * res.h[2])
    assert res.hessian[0, 2] == pytest.approx(cross, rel=1e-3, abs=1e-6)
    with pytest.raises(ConfigError):
        step_hessian(model, calib, rel_step=1.5)
