"""Loss landscape over the steps of two quantizers (LAPQ Fig. 1/2): values, grid, method points, PNG."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from blob_util import blobs, trained_mlp
from torch import nn
from torch.utils.data import TensorDataset

from learnq.analysis.landscape import loss_landscape, method_points, plot_landscape, steps_of
from learnq.analysis.plots import PNG_SIGNATURE
from learnq.errors import ConfigError
from learnq.ptq.api import quantize
from learnq.ptq.calib_loss import step_coordinates


@pytest.fixture(scope="module")
def setup():
    x, labels = blobs(10, 4, 400, spread=1.5)
    net = trained_mlp(x[:300], labels[:300], (16, 16, 12), 4, steps=60)
    calib = TensorDataset(x[300:], labels[300:])
    quantized = quantize(net, calib, method="mse", wbits=3, abits=3, granularity="tensor", skip_first_last=True,
                         progress=False).model
    return net, calib, quantized


@torch.no_grad()
def _loss_with_steps(model: nn.Module, calib: TensorDataset, steps: dict[str, float]) -> float:
    """Set α = Δ / factor on the named quantizers by hand and run the whole model."""
    coords = {c.name: c for c in step_coordinates(model)}
    saved = {n: c.get() for n, c in coords.items()}
    for name, step in steps.items():
        c = coords[name]
        c.set(torch.tensor([step]) / c.step_factor())
    x, y = calib.tensors
    value = float(F.cross_entropy(model(x), y))
    for n, c in coords.items():
        c.set(saved[n])
    return value


def test_landscape_values_shape_and_restored_steps(setup):
    _, calib, model = setup
    names = ["2.weight", "4.input"]
    before = steps_of(model, names)
    axis_a = [before[0] * 0.5, before[0], before[0] * 1.5]
    (ga, gb), losses = loss_landscape(model, calib, names[0], names[1], axis_a, 4, span=(0.5, 2.0))
    assert losses.shape == (3, 4)
    assert np.allclose(ga, axis_a) and np.allclose(gb, np.linspace(0.5, 2.0, 4) * before[1])
    assert np.array_equal(steps_of(model, names), before)
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        expected = _loss_with_steps(model, calib, {names[0]: ga[i], names[1]: gb[j]})
        assert losses[i, j] == pytest.approx(expected, rel=1e-5)
    assert len(np.unique(np.round(losses, 6))) > 3  # the steps matter


def test_landscape_errors(setup):
    _, calib, model = setup
    with pytest.raises(ConfigError):
        loss_landscape(model, calib, "2.weight", "2.weight", 3, 3)
    with pytest.raises(ConfigError):
        loss_landscape(model, calib, "2.weight", "0.weight", 3, 3)  # first layer: float
    with pytest.raises(ConfigError):
        loss_landscape(model, calib, "2.weight", "4.input", 1, 3)
    with pytest.raises(ConfigError):
        loss_landscape(model, calib, "2.weight", "4.input", [0.1, -0.2], 3)
    with pytest.raises(ConfigError):
        steps_of(model, ["nope.weight"])


def test_method_points_are_the_steps_each_method_chose(setup):
    net, calib, model = setup
    names = ["2.weight", "4.input"]
    points = method_points(net, calib, names, ["minmax", ("L3", {"method": "lp", "p": 3.0})], wbits=3, abits=3,
                           skip_first_last=True)
    assert list(points) == ["minmax", "L3"]
    by_hand = quantize(net, calib, method="minmax", wbits=3, abits=3, granularity="tensor", skip_first_last=True,
                       progress=False).model
    assert np.allclose(points["minmax"], steps_of(by_hand, names))
    # min-max never clips: its steps are the largest
    assert points["minmax"][0] >= points["L3"][0] and points["minmax"][1] >= points["L3"][1]
    per_channel = quantize(net, calib, method="mse", wbits=3, abits=32, granularity="channel", skip_first_last=True,
                           progress=False).model
    with pytest.raises(ConfigError):
        steps_of(per_channel, ["2.weight"])


def test_plot_landscape_writes_a_png_with_points(tmp_path):
    grid = (np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0, 4.0]))
    losses = np.arange(12, dtype=float).reshape(3, 4) ** 0.5 + 1.0
    out = plot_landscape(grid, losses, tmp_path / "l" / "landscape.png", labels=("Δ fc2", "Δ fc3 input"),
                         points={"MMSE": (0.15, 2.5), "LAPQ": (0.25, 1.5)}, log=True)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError):
        plot_landscape(grid, losses.T, tmp_path / "x.png")
    with pytest.raises(ConfigError):
        plot_landscape(grid, losses, tmp_path / "y.png", points={"bad": (1.0,)})


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"learnq\[plots\]"):
        plot_landscape((np.arange(2.0), np.arange(2.0)), np.ones((2, 2)), tmp_path / "z.png")
