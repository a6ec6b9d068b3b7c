"""PD-Quant (Liu et al. 2023): distribution correction and rounding learned against the prediction difference."""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

import learnq
from learnq.granularity import Granularity
from learnq.grid import GridSpec, compute_params
from learnq.ptq import quantize
from learnq.ptq.adaround import capture_inputs
from learnq.ptq.pdquant import blocks, distribution_correction, learn_rounding_pd


def test_distribution_correction_hand_computation():
    z = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]]).reshape(3, 2, 1, 1)  # channel 0: mean 3, sd sqrt(8/3)
    mean, std = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])
    full = distribution_correction(z, mean, std, 1.0)
    torch.testing.assert_close(full.mean(dim=(0, 2, 3)), torch.tensor([0.0, 12.0]) * torch.tensor([1.0, 0.0])
                               + torch.tensor([0.0, 2.0]))  # channel 1 has no spread: only its mean moves
    torch.testing.assert_close(full[:, 0].std(correction=0), torch.tensor(1.0))
    half = distribution_correction(z, mean, std, 0.5)
    sd0 = (8 / 3) ** 0.5
    torch.testing.assert_close(half[:, 0].reshape(-1), 1.5 + (torch.tensor([1.0, 3.0, 5.0]) - 3) * (0.5 * sd0 + 0.5)
                               / sd0)
    assert torch.equal(distribution_correction(z, mean, std, 0.0), z)


def _kl(model, x, log_p):
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(model(x), dim=1), log_p, log_target=True, reduction="batchmean"))


def test_learned_rounding_lowers_prediction_difference_below_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("fc1", nn.Linear(8, 32)), ("relu", nn.ReLU()), ("fc2", nn.Linear(32, 5))]))
    model.eval()
    x = torch.randn(256, 8) * 2
    log_p = F.log_softmax(model(x), dim=1).detach()
    spec = GridSpec(bits=2, scheme="symmetric", granularity=Granularity.parse("tensor"))
    w = model.fc1.weight.detach().clone()
    target = F.linear(capture_inputs(model, model.fc1, x), w)
    [(qt, info)] = learn_rounding_pd(model, [model.fc1], spec, x, log_p, [target], iterations=300, seed=0)
    learned = qt.dequantize()
    params = compute_params(w, spec)
    nearest = torch.clamp(torch.round(w / params.scale), *spec.qrange()) * params.scale
    kls = {}
    for tag, value in (("nearest", nearest), ("learned", learned)):
        with torch.no_grad():
            model.fc1.weight.copy_(value)
        kls[tag] = _kl(model, x, log_p)
    assert info["flipped"] > 0
    assert kls["learned"] < 0.8 * kls["nearest"]


def test_pdquant_method_corrects_inputs_after_batchnorm():
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict([("c1", nn.Conv2d(1, 4, 3, padding=1)), ("bn", nn.BatchNorm2d(4)),
                                       ("relu", nn.ReLU()), ("c2", nn.Conv2d(4, 4, 3, padding=1)),
                                       ("flat", nn.Flatten()), ("fc", nn.Linear(4 * 6 * 6, 3))]))
    model.eval()
    x = torch.randn(64, 1, 6, 6)
    result = quantize(model, x, learnq.PTQ(method="pdquant", wbits=4, abits=8, options={"iterations": 20}),
                      progress=False)
    assert [(i["name"], i["corrected"]) for i in result.extra["pdquant"]] == [
        ("c1.weight", False), ("c2.weight", True), ("fc.weight", False)]
    assert [row.get("abits") for row in result.layers] == [8, 8, 8]


def test_blocks_group_consecutive_layers_by_name_prefix():
    names = ["stem.conv.weight", "blocks.0.block.depthwise.conv.weight", "blocks.0.block.project.conv.weight",
             "blocks.1.block.expand.conv.weight", "fc.weight"]
    assert blocks(names, 0) == [[n] for n in names]
    assert blocks(names, 2) == [["stem.conv.weight"], names[1:3], [names[3]], ["fc.weight"]]


def test_block_reconstruction_learns_two_layers_jointly():
    torch.manual_seed(5)
    model = nn.Sequential(OrderedDict([("b", nn.Sequential(OrderedDict([("fc1", nn.Linear(8, 16)), ("relu", nn.ReLU()),
                                                                        ("fc2", nn.Linear(16, 16))]))),
                                       ("relu", nn.ReLU()), ("out", nn.Linear(16, 4))]))
    model.eval()
    x = torch.randn(128, 8)
    result = quantize(model, x, learnq.PTQ(method="pdquant", wbits=2, abits=32, options={"iterations": 200,
                                                                                         "block_depth": 1}),
                      progress=False)
    assert [i["name"] for i in result.extra["pdquant"]] == ["b.fc1.weight", "b.fc2.weight", "out.weight"]
    assert all(i["flipped"] > 0 for i in result.extra["pdquant"])
    with torch.no_grad():
        kl_learned = _kl(result.model, x, F.log_softmax(model(x), dim=1))
        nearest = quantize(model, x, learnq.PTQ(method="minmax", wbits=2, abits=32), progress=False).model
        kl_nearest = _kl(nearest, x, F.log_softmax(model(x), dim=1))
    assert kl_learned < kl_nearest
