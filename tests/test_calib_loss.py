"""The calibration loss L(α) of LAPQ: cached float prefix = full forward, counting, coordinates and steps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from learnq.act import attach_input_quantizers, calibrate
from learnq.attach import Selection
from learnq.errors import ConfigError, DataError, ModelError
from learnq.grid import GridSpec
from learnq.ptq.calib_loss import CalibrationLoss, step_coordinates
from learnq.ptq.ptq_weight import attach_weight_quantizers

SKIP = Selection(skip_first=True, skip_last=True)


def _quantized(net: nn.Module, x: torch.Tensor, selection: Selection = SKIP, bits: int = 3) -> nn.Module:
    net.eval()
    attach_weight_quantizers(net, GridSpec(bits=bits, scheme="lapq"), selection=selection, clip="mse",
                             bias_correction=True)
    acts = attach_input_quantizers(net, bits, selection=selection)
    calibrate(net, x)
    for q in acts.values():
        q.finish_calibration("mse")
    return net


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12),
                         nn.ReLU(), nn.Linear(12, 4))


class _Residual(nn.Module):
    """A float stem whose output feeds a quantized branch and the skip connection (functional ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        y = self.conv2(F.relu(self.conv1(s)))
        y = F.relu(y + s)
        return self.fc(y.mean(dim=(2, 3)))


class _Branchy(_Residual):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 1e9:
            return self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1).expand(-1, 4))
        return super().forward(x)


@torch.no_grad()
def _ref(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """The mean cross-entropy of the whole model, run on the loss's batches: other batch shapes may round an activation
    1 ulp apart, onto another code of a 3-bit quantizer (a step, not an ulp, in the loss). So the logits are equal;
    only the float32 sums of the per-sample losses are grouped otherwise (NLL sums in a cascade: relative error a few
    2⁻²⁴ ≈ 6e-8, far below the rel=1e-6 the tests allow)."""
    return float(F.cross_entropy(torch.cat([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]), y))


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cached_loss_equals_full_model_and_prefix_runs_once():
    net = _mlp()
    x, y = torch.randn(70, 8), torch.randint(0, 4, (70,))
    _quantized(net, x)
    first = _count_calls(net[1])  # float first layer: part of the cached prefix
    last = _count_calls(net[7])
    loss = CalibrationLoss(net, TensorDataset(x, y), batch_size=32)  # 3 batches
    assert loss.cached and loss.names == ["3.input", "3.weight", "5.input", "5.weight"]
    assert first[0] == 3 and last[0] == 0
    expected = _ref(net, x, y, 32)
    a = loss.get_alphas()
    for scale in (1.0, 0.7, 1.3):
        v = loss(a * scale)
        assert v == pytest.approx(_ref(net, x, y, 32), rel=1e-6, abs=1e-7)
        assert v == pytest.approx(loss.full_loss(), rel=1e-6, abs=1e-7)
    loss.set_alphas(a)
    assert loss.evaluate() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # 3 calls + 3 full + 1 = 7 evaluations: the last layer ran 7 x 3 batches (+ 4 reference forwards of 3 batches),
    # the first layer only 3 (cache) + 3 full + 4 reference forwards
    assert loss.evals == 7
    assert last[0] == 7 * 3 + 4 * 3
    assert first[0] == 3 + 3 * 3 + 4 * 3


def test_cache_handles_a_residual_branch():
    torch.manual_seed(1)
    net = _Residual()
    x, y = torch.randn(20, 1, 6, 6), torch.randint(0, 3, (20,))
    _quantized(net, x)
    stem = _count_calls(net.stem)
    loss = CalibrationLoss(net, TensorDataset(x, y), batch_size=8)
    assert loss.cached and [c.layer for c in loss.coordinates] == ["conv1", "conv1", "conv2", "conv2"]
    a = loss.get_alphas()
    for scale in (1.0, 0.5):
        assert loss(a * scale) == pytest.approx(_ref(net, x, y, 8), rel=1e-6)
    assert stem[0] == 3 + 2 * 3  # the cache (3 batches) and the two reference forwards (3 batches each)


def test_untraceable_model_is_evaluated_whole_with_a_warning():
    torch.manual_seed(1)
    net = _Branchy()
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 3, (10,))
    _quantized(net, x)
    with pytest.warns(UserWarning, match="could not trace"):
        loss = CalibrationLoss(net, TensorDataset(x, y))
    assert not loss.cached
    assert loss.evaluate() == pytest.approx(_ref(net, x, y, 256), rel=1e-6)  # the default batch_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not CalibrationLoss(net, TensorDataset(x, y), cache=False).cached


def test_set_alphas_requantizes_only_the_changed_weights():
    net = _mlp()
    x, y = torch.randn(30, 8), torch.randint(0, 4, (30,))
    _quantized(net, x)
    loss = CalibrationLoss(net, TensorDataset(x, y))
    loss.evaluate()
    w3, w5 = (c.quantizer for c in loss.coordinates if c.kind == "weight")
    before = (w3.computations, w5.computations)
    a = loss.get_alphas()
    a[3] *= 0.9  # 5.weight only
    loss(a)
    assert (w3.computations, w5.computations) == (before[0], before[1] + 1)
    assert float(w5.alpha) == pytest.approx(a[3], rel=1e-6)
    # get() is a copy, not a view of the quantizer's α buffer (restoring a saved α must work)
    c5 = loss.coordinates[3]
    saved = c5.get()
    c5.set(saved * 2)
    assert float(saved) == pytest.approx(a[3], rel=1e-6)


def test_steps_are_alpha_times_the_grid_factor():
    net = _mlp()
    x, y = torch.randn(30, 8), torch.randint(0, 4, (30,))
    _quantized(net, x, bits=3)
    loss = CalibrationLoss(net, TensorDataset(x, y))
    # inputs after ReLU: unsigned, Δ = α/7; weights on the LAPQ grid: Δ = 2α/7
    assert np.allclose(loss.step_factors(), [1 / 7, 2 / 7, 1 / 7, 2 / 7])
    steps = loss.get_steps()
    loss.set_steps(steps * 2)
    assert np.allclose(loss.get_alphas(), steps * 2 / loss.step_factors(), rtol=1e-6)
    assert [c.name for c in step_coordinates(net)] == loss.names


def test_errors():
    net = _mlp()
    x, y = torch.randn(30, 8), torch.randint(0, 4, (30,))
    with pytest.raises(ModelError):
        CalibrationLoss(net, TensorDataset(x, y))
    _quantized(net, x)
    with pytest.raises(DataError):
        CalibrationLoss(net, x)  # no labels
    with pytest.raises(DataError):
        CalibrationLoss(net, TensorDataset(x[:0], y[:0]))
    with pytest.raises(ConfigError):
        CalibrationLoss(net, TensorDataset(x, y), names=["1.weight"])
    loss = CalibrationLoss(net, TensorDataset(x, y), names=["5.weight"])
    assert loss.names == ["5.weight"]
    with pytest.raises(ConfigError):
        loss.set_alphas([1.0, 2.0])
