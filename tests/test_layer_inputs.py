"""One forward pass paused at each layer (learnq.ptq.layer_inputs) gives each layer exactly the inputs a partial
forward of the partially quantized model gives it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from learnq.ptq.adaround import capture_inputs
from learnq.ptq.layer_inputs import LayerInputs


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        y = y + F.relu(self.b(y))  # the skip keeps a's output alive past b
        return self.c(torch.flatten(F.max_pool2d(y, 2), 1))


def test_paused_pass_equals_partial_forwards_while_layers_change():
    torch.manual_seed(0)
    model = _Residual().eval()
    twin = _Residual().eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(10, 2, 8, 8)
    stepper = LayerInputs.build(model, ["a", "b", "c"], x, batch_size=4)  # batches of 4, 4, 2
    assert stepper is not None
    for name, got in stepper:
        want = capture_inputs(twin, twin.get_submodule(name), x, batch_size=4)
        # same operations on the same batches: bit for bit
        assert torch.equal(torch.cat(got), want)
        with torch.no_grad():  # "quantize" the layer before the next one reads what it computes
            for m in (model.get_submodule(name), twin.get_submodule(name)):
                m.weight.copy_(torch.round(m.weight * 4) / 4)


class _Reversed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.second = nn.Linear(3, 3)
        self.first = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else x  # data-dependent: not traceable


def test_cases_it_cannot_step_exactly_are_refused():
    x = torch.randn(4, 3)
    # layers called in another order than they are quantized (definition order), twice, or an untraceable forward
    assert LayerInputs.build(_Reversed(), ["second", "first"], x) is None
    assert LayerInputs.build(_Twice(), ["fc"], x) is None
    assert LayerInputs.build(_Branchy(), ["fc"], x) is None
    assert LayerInputs.build(_Reversed(), ["first", "second"], x) is not None
