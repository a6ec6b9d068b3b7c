"""Tests for learnq.analysis.robustness: optimal clips, scaled steps, and accuracy over the step factors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.analysis.plots import PNG_SIGNATURE
from learnq.analysis.robustness import optimal_clip, plot_robustness, quantize_scaled, step_robustness
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, quantize_tensor
from learnq.pipeline.data import load_dataset
from learnq.pipeline.models import build_model
from learnq.pipeline.train import evaluate
from learnq.ptq.ptq_weight import quantize_weights


@pytest.fixture(scope="module")
def classifier():
    """Nearest-centroid linear classifier of seeded Gaussian blobs: accurate without training (W = μ_k,
    b = -|μ_k|²/2, Bayes-optimal for equal isotropic noise)."""
    splits = load_dataset("synthetic", seed=0, input_shape=(1, 8, 8), size=1000, separation=4.0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=[])
    x, y = splits.train.tensors
    mu = torch.stack([x[y == k].reshape(-1, 64).mean(0) for k in range(10)])
    with torch.no_grad():
        model.fc1.weight.copy_(mu)
        model.fc1.bias.copy_(-(mu**2).sum(1) / 2)
    return model, splits.test


def _sym_mse(w: torch.Tensor, alpha: float, bits: int) -> float:
    """Squared error of the signed symmetric grid, written out (METHODS.md §0)."""
    step = alpha / (2 ** (bits - 1) - 1)
    q = torch.clamp(torch.round(w / step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return float(((q * step - w) ** 2).sum())


def test_optimal_clip_minmax_is_the_range() -> None:
    w = torch.tensor([[0.5, -2.0, 1.0], [0.25, 0.1, -0.3]])
    spec = GridSpec(bits=4, granularity=Granularity.parse("channel"))
    assert torch.equal(optimal_clip(w, spec), torch.tensor([2.0, 0.3]))
    assert torch.equal(optimal_clip(w, GridSpec(bits=4)), torch.tensor([2.0]))
    assert torch.equal(optimal_clip(w, GridSpec(bits=4, scheme="affine")), torch.tensor([1.5]))  # half-width


def test_optimal_clip_mse_is_the_grid_minimum() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(2000, generator=g) * 0.1, torch.tensor([2.0])])  # one far outlier
    bits, grid = 3, 50
    alpha = float(optimal_clip(w, GridSpec(bits=bits), "mse", mse_grid=grid))
    errors = [_sym_mse(w, 2.0 * i / grid, bits) for i in range(1, grid + 1)]
    best = min(range(grid), key=lambda i: errors[i])
    assert alpha == pytest.approx(2.0 * (best + 1) / grid, rel=1e-6)
    assert alpha < 1.0  # the outlier is clipped
    assert _sym_mse(w, alpha, bits) < _sym_mse(w, 2.0, bits)


def test_optimal_clip_mse_per_group_with_partial_last_group() -> None:
    w = torch.tensor([0.1, -0.2, 0.3, 5.0, 0.05, -0.1, 0.2])
    spec = GridSpec(bits=2, granularity=Granularity.parse("group:3"))
    alpha = optimal_clip(w, spec, "mse", mse_grid=20)
    assert float(alpha[2]) == pytest.approx(0.2)  # a one-value group is stored exactly: it keeps its range
    for k, group in enumerate((w[0:3], w[3:6])):
        amax = float(group.abs().max())
        errors = [_sym_mse(group, amax * i / 20, 2) for i in range(1, 21)]
        assert float(alpha[k]) == pytest.approx(amax * (min(range(20), key=lambda i: errors[i]) + 1) / 20)


def test_optimal_clip_other_rules_come_from_ptq_clipping() -> None:
    from learnq.clipping import choose_clip

    w = torch.randn(500, generator=torch.Generator().manual_seed(2))
    spec = GridSpec(bits=4)
    assert torch.equal(optimal_clip(w, spec, "aciq"), choose_clip(w, spec, "aciq"))
    with pytest.raises(ConfigError, match="affine"):
        optimal_clip(w, GridSpec(bits=4, scheme="affine"), "aciq")


def test_quantize_scaled() -> None:
    w = torch.tensor([[-1.0, 0.2, 0.7], [0.3, 0.9, 1.5]])
    for scheme in ("symmetric", "affine", "lapq"):
        spec = GridSpec(bits=3, scheme=scheme, granularity=Granularity.parse("channel"))
        plain = quantize_tensor(w, spec)
        at_one = quantize_scaled(w, spec, optimal_clip(w, spec), 1.0)
        assert torch.equal(at_one.dequantize(), plain.dequantize()), scheme
    spec = GridSpec(bits=3, scheme="symmetric")
    assert torch.allclose(quantize_scaled(w, spec, optimal_clip(w, spec), 2.0).scale, 2 * 1.5 / 3 * torch.ones(1))
    affine = GridSpec(bits=2, scheme="affine")
    qt = quantize_scaled(w, affine, optimal_clip(w, affine), 2.0)  # range [-1, 1.5] -> [-2.25, 2.75] about 0.25
    assert float(qt.offset) == pytest.approx(-2.25) and float(qt.scale) == pytest.approx(5.0 / 3)


def test_factor_one_is_plain_minmax_and_extremes_are_worse(classifier) -> None:
    model, test = classifier
    plain = copy.deepcopy(model)
    quantize_weights(plain, GridSpec(bits=4))
    expected = evaluate(plain, test)
    rows = step_robustness(model, test, factors=(1 / 16, 1.0, 16.0), bits=4)
    by_factor = {r["factor"]: r for r in rows}
    assert by_factor[1.0]["accuracy"] == expected["accuracy"]
    assert by_factor[1.0]["loss"] == expected["loss"]
    assert by_factor[1 / 16]["accuracy"] < by_factor[1.0]["accuracy"] - 0.1
    assert by_factor[16.0]["accuracy"] < by_factor[1.0]["accuracy"] - 0.1
    assert by_factor[16.0]["accuracy"] == pytest.approx(0.1)  # every weight rounds to 0: one class wins
    assert {r["layer"] for r in rows} == {"all"} and rows[0]["bits"] == 4 and rows[0]["n"] == len(test)


def test_per_layer_and_model_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, model(x).argmax(1).detach())
    rows = step_robustness(model, data, factors=(0.5, 1.0, 3.0), bits=3, per_layer=True, step="mse")
    assert [(r["layer"], r["factor"]) for r in rows] == [
        (n, f) for n in ("1.weight", "3.weight") for f in (0.5, 1.0, 3.0)]
    everything = step_robustness(model, data, factors=(1.0,), bits=3, step="mse")
    at_one = {r["accuracy"] for r in rows if r["factor"] == 1.0}
    assert at_one == {everything[0]["accuracy"]}
    assert not parametrize.is_parametrized(model[1], "weight")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_errors(classifier) -> None:
    model, test = classifier
    with pytest.raises(ConfigError, match="factors"):
        step_robustness(model, test, factors=())
    with pytest.raises(ConfigError, match="factor"):
        step_robustness(model, test, factors=(1.0, -2.0))
    with pytest.raises(ConfigError, match="step rule"):
        step_robustness(model, test, step="bogus")
    with pytest.raises(ConfigError, match="scheme"):
        step_robustness(model, test, scheme="unsigned")
    with pytest.raises(ConfigError, match="mse_grid"):
        optimal_clip(torch.ones(3), GridSpec(bits=4), "mse", mse_grid=0)


def test_plot(tmp_path, classifier) -> None:
    model, test = classifier
    rows = step_robustness(model, test, factors=(0.5, 1.0, 2.0), bits=3, per_layer=True)
    path = plot_robustness(rows, tmp_path / "r.png", float_accuracy=0.9)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError, match="no robustness row"):
        plot_robustness([], tmp_path / "none.png")
