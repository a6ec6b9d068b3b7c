"""Parameter selection rules and per-name bits."""

from __future__ import annotations

import pytest
from torch import nn

from learnq.attach import BitsRule, Selection, select_parameters
from learnq.errors import ConfigError, ModelError


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4),
        nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False),
    )


def test_default_selects_conv_and_linear_weights_in_order():
    assert select_parameters(_net()) == ["0.weight", "2.weight", "5.weight", "7.weight"]


def test_rules():
    net = _net()
    assert select_parameters(net, Selection(skip_first=True, skip_last=True)) == ["2.weight", "5.weight"]
    assert select_parameters(net, Selection(skip_depthwise=True)) == ["0.weight", "5.weight", "7.weight"]
    assert select_parameters(net, Selection(types=("linear",), biases=True)) == ["5.weight", "5.bias", "7.weight"]
    assert select_parameters(net, Selection(exclude=("0.*",), min_numel=40)) == ["2.weight"]
    assert select_parameters(net, Selection(include="7.*")) == ["7.weight"]


def test_errors():
    with pytest.raises(ModelError, match="no parameter"):
        select_parameters(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="layer type"):
        Selection(types=("lstm",))
    with pytest.raises(ConfigError, match="min_numel"):
        Selection(min_numel=-1)


def test_bits_rule():
    rule = BitsRule(default=4, overrides={"0.*": 8, "7.weight": 6})
    assert [rule(n) for n in ["0.weight", "2.weight", "7.weight"]] == [8, 4, 6]
