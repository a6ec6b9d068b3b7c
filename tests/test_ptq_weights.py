"""Weight-only min-max PTQ: the model computes with exactly the quantized values."""

from __future__ import annotations

import torch
from torch import nn

from learnq.attach import BitsRule, Selection
from learnq.granularity import Granularity
from learnq.grid import GridSpec, quantize_tensor
from learnq.ptq.ptq_weight import quantize_weights
from learnq.quantized import quantized_parameters


def test_quantize_weights_replaces_weights_by_grid_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    reference = [m.weight.detach().clone() for m in (net[0], net[2])]
    x = torch.randn(4, 6)
    spec = GridSpec(bits=3, granularity=Granularity.parse("channel"))
    out = quantize_weights(net, spec, bits=BitsRule(3, {"2.*": 8}))
    assert list(out) == ["0.weight", "2.weight"]
    assert out["2.weight"].bits == 8
    expected0 = quantize_tensor(reference[0], spec).dequantize()
    assert torch.equal(net[0].weight, expected0)
    manual = nn.functional.linear(torch.relu(nn.functional.linear(x, expected0, net[0].bias)),
                                  quantize_tensor(reference[1], GridSpec(bits=8, granularity=spec.granularity))
                                  .dequantize(), net[2].bias)
    assert torch.equal(net(x), manual)
    # at most 2^3 distinct values per output row
    assert all(len(torch.unique(row)) <= 8 for row in net[0].weight)
    assert dict(quantized_parameters(net)).keys() == {"0.weight", "2.weight"}


def test_quantize_weights_with_clip_function():
    net = nn.Sequential(nn.Linear(4, 4))
    quantize_weights(net, GridSpec(bits=4), clip=lambda w, spec: torch.tensor(0.1), selection=Selection())
    assert float(net[0].weight.abs().max()) <= 0.1 * 8 / 7 + 1e-7
