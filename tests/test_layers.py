"""Tests for learnq.layers: which modules carry the weights methods act on."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ModelError
from learnq.layers import is_depthwise, raw_weight, require_weight_layers, weight_count, weight_layers


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)  # regular, single input channel
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)  # depthwise
        self.block = nn.Sequential(nn.Conv1d(4, 8, 1), nn.ReLU(), nn.Conv3d(2, 2, 1, groups=2))
        self.up = nn.ConvTranspose2d(4, 4, 2)  # not a Conv2d subclass: excluded
        self.fc = nn.Linear(8, 3)
        self.emb = nn.Embedding(10, 3)


def test_weight_layers_definition_order_and_types() -> None:
    names = [n for n, _ in weight_layers(Net())]
    assert names == ["conv1", "dw", "block.0", "block.2", "fc"]


def test_weight_layers_without_depthwise() -> None:
    names = [n for n, _ in weight_layers(Net(), include_depthwise=False)]
    assert names == ["conv1", "block.0", "fc"]


def test_is_depthwise_cases() -> None:
    assert is_depthwise(nn.Conv2d(4, 4, 3, groups=4))
    assert is_depthwise(nn.Conv2d(4, 8, 3, groups=4))  # channel multiplier 2
    assert is_depthwise(nn.Conv1d(3, 3, 1, groups=3))
    assert not is_depthwise(nn.Conv2d(4, 8, 3, groups=2))  # grouped, not depthwise
    assert not is_depthwise(nn.Conv2d(1, 4, 3))  # single input channel, groups=1
    assert not is_depthwise(nn.Linear(4, 4))
    assert not is_depthwise(nn.ReLU())


def test_tied_weights_listed_once() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    same = nn.Linear(2, 2)
    model2 = nn.Sequential(same, same)  # the same module twice
    assert [n for n, _ in weight_layers(model)] == ["0"]
    assert [n for n, _ in weight_layers(model2)] == ["0"]
    assert weight_count(model) == 9


def test_subclass_of_linear_included() -> None:
    mha = nn.MultiheadAttention(4, 2)
    # out_proj is a Linear subclass; the fused in-projection is a raw Parameter, not a layer
    assert [n for n, _ in weight_layers(mha)] == ["out_proj"]


def test_raw_weight_of_parametrized_layer() -> None:
    layer = nn.Linear(2, 2)
    original = layer.weight
    parametrize.register_parametrization(layer, "weight", _Double())
    assert raw_weight(layer) is original
    torch.testing.assert_close(layer.weight, 2 * original.detach())
    assert [n for n, _ in weight_layers(nn.Sequential(layer))] == ["0"]


def test_require_raises_model_error_without_layers() -> None:
    with pytest.raises(ModelError, match="at least one"):
        require_weight_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), what="X")
    assert weight_layers(nn.ReLU()) == []


def test_lazy_uninitialised_raises() -> None:
    with pytest.raises(ModelError, match="forward pass"):
        weight_layers(nn.Sequential(nn.LazyLinear(3)))


def test_not_a_module_raises() -> None:
    with pytest.raises(ModelError, match="torch.nn.Module"):
        weight_layers("model")  # type: ignore[arg-type]


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w
