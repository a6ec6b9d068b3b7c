"""Tests for learnq.regularizers.l2 (DSMM's L2 / heavy-L2 baselines) and the regularizer registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.regularizers import KURE, L2, REGULARIZERS, L2Heavy, Regularizer, build_regularizer, describe_regularizers
from learnq.regularizers.l2 import L2_DEFAULT_STRENGTH


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Conv1d(1, 1, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[0].bias.fill_(10.0)  # never regularized
        model[2].weight.copy_(torch.tensor([[[3.0, 0.0, -1.0]]]))
    return model


def test_hand_computation() -> None:
    # layer 0: ½(1 + 4 + 0.25 + 0) = 2.625; layer 2: ½(9 + 0 + 1) = 5.0; total·0.01 = 0.07625
    reg = L2(_model(), strength=0.01)
    assert reg.per_layer() == {"0": pytest.approx(2.625), "2": pytest.approx(5.0)}
    assert reg().item() == pytest.approx(0.07625, rel=1e-6)


def test_gradient_equals_weight_decay() -> None:
    model = _model()
    reg = L2(model, strength=0.1)
    reg().backward()
    torch.testing.assert_close(model[0].weight.grad, 0.1 * model[0].weight.detach())
    assert model[0].bias.grad is None
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: L2(nn.Sequential(_Holder(x)), strength=0.3)(), (w,))


def test_heavy_is_ten_times() -> None:
    model = _model()
    assert L2(model).strength == pytest.approx(L2_DEFAULT_STRENGTH)
    assert L2Heavy(model).strength == pytest.approx(10 * L2_DEFAULT_STRENGTH)
    assert L2Heavy(model, strength=0.01)().item() == pytest.approx(10 * L2(model, strength=0.01)().item(), rel=1e-6)
    with pytest.raises(ConfigError, match="strength"):
        L2Heavy(model, strength=-1.0)


def test_registry_names_and_descriptions() -> None:
    assert list(REGULARIZERS) == ["dsmm", "symreg", "kure", "l2", "l2-heavy"]
    assert all(issubclass(cls, Regularizer) and cls.name == name for name, cls in REGULARIZERS.items())
    descriptions = describe_regularizers()
    assert all(d and "\n" not in d for d in descriptions.values())


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_every_registered_regularizer_is_a_finite_scalar_with_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    reg = build_regularizer(name, model)
    loss = reg()
    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert set(reg.per_layer()) == {"0", "2"}


def test_call_with_the_model_as_an_extra_loss_term() -> None:
    model = _model()
    reg = L2(model, strength=0.01)
    assert reg(model).item() == pytest.approx(0.07625, rel=1e-6)  # the trainer's fn(model) -> scalar contract
    wrapper = nn.Module()
    wrapper.module = model  # like DistributedDataParallel(model).module
    assert L2(wrapper, strength=0.01)(model).item() == pytest.approx(0.07625, rel=1e-6)
    with pytest.raises(ConfigError, match="built on another model"):
        reg(_model())


def test_build_regularizer_errors_and_options() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="unknown regularizer 'dsm'"):
        build_regularizer("dsm", model)
    with pytest.raises(ConfigError, match="unknown option"):
        build_regularizer("kure", model, strenght=1.0)
    reg = build_regularizer("kure", model, strength=0.5, target=2.0)
    assert isinstance(reg, KURE) and reg.strength == 0.5 and reg.target == 2.0


class _Holder(nn.Module):
    """A linear layer whose weight is a given tensor (for gradcheck through the module API)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
        del self.lin.weight
        self.lin.weight = w  # type: ignore[assignment]
