"""QDrop (Wei et al. 2022): the drop mask's rate, the blocks of a network, and block reconstruction lowering the
block output error below nearest rounding's."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from learnq.act import ActQuantizer
from learnq.errors import ConfigError
from learnq.pipeline.models.convnets import LeNet
from learnq.ptq import quantize
from learnq.ptq.qdrop import DropQuant, block_of
from learnq.quantized import quantized_parameters


class _Halve(nn.Module):
    """A stand-in quantizer whose output differs from its input everywhere (x > 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_drop_mask_rate(p):
    x = torch.rand(200_000) + 1.0
    gen = torch.Generator().manual_seed(7)
    y = DropQuant(_Halve(), p, gen)(x)
    kept_float = float((y == x).float().mean())
    assert bool(((y == x) | (y == x / 2)).all())
    # Binomial(n = 200,000, p): 5 standard deviations are at most 0.0056
    assert abs(kept_float - p) <= 5 * math.sqrt(p * (1 - p) / x.numel()) + 1e-12
    # a fresh mask per call
    if 0 < p < 1:
        assert not torch.equal(DropQuant(_Halve(), p, gen)(x), y)


def test_blocks_of_lenet_and_of_a_residual_net():
    lenet = LeNet((1, 28, 28), 10, (6, 16), (120, 84))
    assert block_of(lenet) == [["features.conv1", "features.relu1", "features.pool1"],
                               ["features.conv2", "features.relu2", "features.pool2", "features.adapt"],
                               ["classifier.flatten", "classifier.fc1", "classifier.relu3"],
                               ["classifier.fc2", "classifier.relu4"], ["classifier.fc3"]]

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    net = nn.Sequential(OrderedDict([("pre", nn.Identity()), ("res", Res()), ("act", nn.ReLU()),
                                     ("fc", nn.Linear(2, 2))]))
    # parameter-free modules before a container are a block of their own (left in float: no weight)
    assert block_of(net) == [["pre"], ["res"], ["act", "fc"]]


def _net() -> nn.Sequential:
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 5 * 5, 4))


def test_reconstruction_lowers_every_block_error_and_restores_the_quantizers():
    model = _net()
    x = torch.randn(128, 2, 5, 5)
    result = quantize(model, x, method="qdrop", wbits=3, abits=8, iterations=200, progress=False)
    infos = result.extra["qdrop"]
    assert [i["block"] for i in infos] == [["0", "1"], ["2", "3", "4"], ["5"]]
    assert infos[0]["qdrop_error"] <= infos[0]["nearest_error"]  # 18 weights per channel: little to gain
    for info in infos[1:]:
        assert info["qdrop_error"] < 0.9 * info["nearest_error"]  # measured 0.70 and 0.36
    assert sum(i["flipped"] for i in infos) > 0
    for layer in (result.model[0], result.model[2], result.model[5]):
        assert type(layer.input_quantizer) is ActQuantizer and layer.input_quantizer.enabled  # DropQuant removed
    assert {n: q.method for n, q in quantized_parameters(result.model)} == {
        "0.weight": "qdrop", "2.weight": "qdrop", "5.weight": "qdrop"}


def test_options_are_checked_and_bias_correction_composes():
    x = torch.randn(32, 2, 5, 5)
    with pytest.raises(ConfigError, match="drop_prob"):
        quantize(_net(), x, method="qdrop", wbits=4, drop_prob=1.5, progress=False)
    model = _net()
    bc = quantize(model, x, method="qdrop", wbits=3, abits=32, iterations=5, bias_correction=True, progress=False)
    q = dict(quantized_parameters(bc.model))["5.weight"]
    # float32 means of 150 values
    torch.testing.assert_close(q.dequantize().mean(1), model[5].weight.detach().mean(1), rtol=0, atol=1e-6)
