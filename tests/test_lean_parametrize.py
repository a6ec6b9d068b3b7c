"""learnq.parametrization.register: the lean ParametrizationList computes what torch's computes (same calls, same
order, hooks run), and torch's own tools (remove, state_dict, deepcopy) still work on it."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.parametrization import LeanParametrizationList, register


class _Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


class _Shift(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def _pair() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    return a, copy.deepcopy(a)


def test_same_values_in_the_same_order_as_torch() -> None:
    lean, plain = _pair()
    for p in (_Scale(3.0), _Shift()):  # order matters: (w·3)+1 differs from (w+1)·3
        register(lean, "weight", p)
        parametrize.register_parametrization(plain, "weight", copy.deepcopy(p), unsafe=True)
    assert type(lean.parametrizations["weight"]) is LeanParametrizationList
    assert type(plain.parametrizations["weight"]) is parametrize.ParametrizationList
    assert torch.equal(lean.weight, plain.weight)
    assert torch.equal(lean.weight, lean.parametrizations["weight"].original * 3.0 + 1.0)
    x = torch.randn(5, 4)
    assert torch.equal(lean(x), plain(x))


def test_hooks_on_a_parametrization_still_run() -> None:
    lean, _ = _pair()
    p = _Scale(2.0)
    register(lean, "weight", p)
    calls = []
    p.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    lean.weight  # noqa: B018 - the access runs the parametrization
    assert calls == [torch.Size([3, 4])]


def test_remove_deepcopy_and_state_dict() -> None:
    lean, plain = _pair()
    register(lean, "weight", _Scale(2.0))
    parametrize.register_parametrization(plain, "weight", _Scale(2.0), unsafe=True)
    assert lean.state_dict().keys() == plain.state_dict().keys()
    twin = copy.deepcopy(lean)
    assert type(twin.parametrizations["weight"]) is LeanParametrizationList and torch.equal(twin.weight, lean.weight)
    parametrize.remove_parametrizations(lean, "weight", leave_parametrized=True)
    parametrize.remove_parametrizations(plain, "weight", leave_parametrized=True)
    assert type(lean) is nn.Linear and torch.equal(lean.weight, plain.weight)
