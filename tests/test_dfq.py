"""DFQ (Nagel et al. 2019): cross-layer equalization, high-bias absorption, data-free bias correction."""

import copy
import math
from collections import OrderedDict

import pytest
import torch
from scipy import integrate, stats
from torch import nn

import learnq
from learnq.bn_fold import bn_statistics, find_conv_bn_pairs, fold_batchnorm
from learnq.ptq import quantize
from learnq.ptq.dfq import expected_activation, relu_mean
from learnq.ptq.equalize import equalize, equalize_pair, find_pairs, input_ranges, output_ranges

# Equalization multiplies and divides weights by s in float64 and rounds once to float32, so the equalized network
# differs from the original by a few float32 ulps per weight, accumulated over ~100-term dot products: relative
# error ~1e-6; 1e-5 leaves a margin for other kernels (MKL_CBWR).
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))


def test_cle_scales_match_hand_computation():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 0.25]]))
        model[2].weight.copy_(torch.tensor([[1.0, 8.0], [-4.0, 2.0]]))
    pair = find_pairs(model)[0]
    assert (pair.first, pair.second, pair.act) == ("0", "2", "relu")
    # r1 = (2, 0.5), r2 = (4, 8): s = sqrt(r1 r2) / r2 = (sqrt(8)/4, 2/8)
    s = equalize_pair(model, pair)
    torch.testing.assert_close(s, torch.tensor([math.sqrt(8) / 4, 0.25]))
    expected = torch.tensor([math.sqrt(8), 2.0])  # sqrt(r1 r2) on both sides
    torch.testing.assert_close(output_ranges(model[0]), expected)
    torch.testing.assert_close(input_ranges(model[2], 2), expected)


def test_cle_equalizes_chain_and_keeps_function():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 2, 8).reshape(-1, 1))  # very unequal channel ranges
    x = torch.randn(64, 6)
    before = model(x).detach()
    info = equalize(model, max_iter=100, tol=1e-7)
    assert info["pairs"] == ["0->2", "2->4"] and info["sweeps"] < 100
    for first, second in ((model[0], model[2]), (model[2], model[4])):
        torch.testing.assert_close(output_ranges(first), input_ranges(second, first.out_features), rtol=1e-5,
                                   atol=0.0)  # converged: every pair equal to the sweep tolerance
    torch.testing.assert_close(model(x), before, **TOL)


def _dw_pw() -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(OrderedDict([
        ("pw0", nn.Conv2d(3, 8, 1)), ("bn0", nn.BatchNorm2d(8)), ("relu0", nn.ReLU()),
        ("dw", nn.Conv2d(8, 8, 3, padding=1, groups=8)), ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("pw", nn.Conv2d(8, 4, 1)), ("flat", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, 3)),
    ]))
    with torch.no_grad():
        for bn in (model.bn0, model.bn1):
            bn.weight.copy_(torch.rand(8) * 3 + 0.1)
            bn.bias.copy_(torch.randn(8) * 2)
            bn.running_mean.copy_(torch.randn(8))
            bn.running_var.copy_(torch.rand(8) + 0.5)
        model.dw.weight.mul_(torch.logspace(-1.5, 1.5, 8).reshape(-1, 1, 1, 1))
    return model.eval()


def test_cle_depthwise_pointwise_and_flatten_after_bn_fold():
    model = _dw_pw()
    x = torch.randn(16, 3, 8, 8)
    before = model(x).detach()
    folded = fold_batchnorm(model)
    pairs = find_pairs(folded)
    assert [(p.first, p.second, p.act, p.maxpool, p.flatten) for p in pairs] == [
        ("pw0", "dw", "relu", False, False), ("dw", "pw", "relu", True, False), ("pw", "fc", "none", False, True)]
    equalize(folded, absorb=False, max_iter=200, tol=1e-7)
    for p in pairs:
        a, b = folded.get_submodule(p.first), folded.get_submodule(p.second)
        c = a.weight.shape[0]
        torch.testing.assert_close(output_ranges(a), input_ranges(b, c), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(folded(x), before, **TOL)


def test_high_bias_absorption_hand_computation():
    model = _mlp()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([5.0, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        model[2].bias.zero_()
    stats_ = {"0": (torch.tensor([5.0, -1.0]), torch.tensor([1.0, 1.0]))}
    x = torch.zeros(1, 2)  # pre-activation = bias = (5, -1): above c on channel 0, below 0 on channel 1
    before = model(x).detach()
    with torch.no_grad():
        model[0].weight.zero_()  # keep ranges from moving the numbers: CLE leaves zero channels alone
    info = equalize(model, stats_)
    # c = max(0, β - 3γ) = (2, 0); b1 = (3, -1); b2 = W2·c = (2, 6)
    assert info["absorbed"] == {"0->2": 2.0}
    torch.testing.assert_close(model[0].bias, torch.tensor([3.0, -1.0]))
    torch.testing.assert_close(model[2].bias, torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(stats_["0"][0], torch.tensor([3.0, -1.0]))
    torch.testing.assert_close(model(x), before)


def test_relu6_pair_without_bn_statistics_is_left_alone_and_reported():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 2))
    assert [p.act for p in find_pairs(model)] == ["relu6"]
    w = model[0].weight.detach().clone()
    info = equalize(model)
    assert info["pairs"] == [] and list(info["left_alone"]) == ["0->2"]
    assert "BatchNorm statistics" in info["left_alone"]["0->2"]
    assert torch.equal(model[0].weight, w)


def _relu6_mlp() -> tuple[nn.Sequential, dict, torch.Tensor]:
    """Linear -> ReLU6 -> Linear whose 3 hidden channels see known pre-activations: channel 0 stays in [1, 3]
    (clip never binds), channel 1 reaches 9 (clip binds), channel 2 stays in [0.5, 1.5] with a tiny W1 range."""
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU6(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [4.0], [0.05]]))
        model[0].bias.copy_(torch.tensor([2.0, 5.0, 1.0]))
        model[2].weight.copy_(torch.tensor([[0.5, 1.0, 8.0], [-0.25, 2.0, 4.0]]))
        model[2].bias.zero_()
    x = torch.linspace(-1, 1, 41).reshape(-1, 1)  # pre-activations: 2 + x, 5 + 4x, 1 + 0.05x
    # BatchNorm-like statistics whose 3σ bound covers those ranges: u = β + 3γ = (3, 9, 1.05)
    stats_ = {"0": (torch.tensor([2.0, 5.0, 1.0]), torch.tensor([1 / 3, 4 / 3, 0.05 / 3]))}
    return model, stats_, x


def test_relu6_scales_hand_computation():
    model, stats_, _ = _relu6_mlp()
    pair = find_pairs(model)[0]
    upper = torch.tensor([3.0, 9.0, 1.05])
    s = equalize_pair(model, pair, upper)
    # r1 = (1, 4, 0.05), r2 = (0.5, 2, 8): free scales sqrt(r1 r2)/r2. Channel 0: sqrt(0.5)/0.5 = 1.414 >= u/6 =
    # 0.5, kept; channel 1: u = 9 > 6, held at 1; channel 2: sqrt(0.4)/8 = 0.079 < u/6 = 0.175, raised to 0.175
    # (its clip moves to 6·0.175 = 1.05, the channel's bound)
    torch.testing.assert_close(s, torch.tensor([math.sqrt(0.5) / 0.5, 1.0, 1.05 / 6]), rtol=1e-6, atol=0.0)


def test_relu6_equalization_keeps_function_where_plain_scaling_breaks_it():
    model, stats_, x = _relu6_mlp()
    before = model(x).detach()
    plain = copy.deepcopy(model)
    equalize_pair(plain, find_pairs(plain)[0])  # Eq. 10-11 without the ReLU6 bound
    assert (plain(x) - before).abs().max() > 0.1  # the clip moved: plain scaling changes the network
    info = equalize(model, stats_, absorb=False)
    assert info["pairs"] == ["0->2"] and info["relu6_channels_held"] == {"0->2": 1}
    # float32 products of the rescaled weights: a few ulps of values below 10
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    # channel 0 equalized (its free scale is above the bound): r1 == r2 to the sweep tolerance
    torch.testing.assert_close(output_ranges(model[0])[0], input_ranges(model[2], 3)[0], rtol=1e-4, atol=0.0)


def test_relu6_high_bias_absorption_only_where_clip_never_binds():
    model, stats_, x = _relu6_mlp()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([4.0, 5.0, 1.0]))  # channel 0: pre-activation 4 + x in [3, 5]
    stats_["0"] = (torch.tensor([4.0, 5.0, 1.0]), stats_["0"][1])
    before = model(x).detach()
    info = equalize(model, stats_, max_iter=1, tol=1e9)  # one sweep (scales then frozen), then absorption
    # c = max(0, β - 3γ) per channel after the sweep; channel 1 (u = 9 > 6) gives up nothing
    mean, std = stats_["0"]
    assert info["absorbed"]["0->2"] > 0
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert float(model[0].bias.detach()[1]) == pytest.approx(5.0)  # held channel: s = 1 and no absorption
    assert float(mean[1]) == pytest.approx(5.0) and float(std[1]) == pytest.approx(4 / 3)


@pytest.mark.parametrize("mu,sd", [(0.0, 1.0), (1.5, 0.5), (-2.0, 1.0), (4.0, 2.0)])
def test_expected_activation_matches_integral(mu, sd):
    pdf = stats.norm(mu, sd).pdf
    lo, hi = mu - 12 * sd, mu + 12 * sd
    relu = integrate.quad(lambda z: max(z, 0.0) * pdf(z), lo, hi, points=[0.0])[0]
    relu6 = integrate.quad(lambda z: min(max(z, 0.0), 6.0) * pdf(z), lo, hi, points=[0.0, 6.0])[0]
    m, s = torch.tensor([mu], dtype=torch.float64), torch.tensor([sd], dtype=torch.float64)
    assert float(relu_mean(m, s)) == pytest.approx(relu, abs=1e-9)
    assert float(expected_activation("relu6", m, s)) == pytest.approx(relu6, abs=1e-9)


def test_bias_correction_removes_expected_output_shift():
    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 16)), ("bn", nn.BatchNorm1d(16)), ("relu", nn.ReLU()),
                                       ("fc2", nn.Linear(16, 8)), ("out", nn.Linear(8, 2))]))
    with torch.no_grad():
        model.bn.weight.copy_(torch.rand(16) + 0.5)
        model.bn.bias.copy_(torch.randn(16))
    model.eval()
    calib = torch.randn(32, 4)
    results = {}
    for corrected in (False, True):  # no CLE, no absorption: fc2's input is relu(N(β, γ²)) exactly as assumed
        config = learnq.PTQ(method="dfq", wbits=3, abits=32, granularity="tensor",
                            options={"bn_bias_correction": corrected, "absorb": False, "cle": False})
        results[corrected] = quantize(model, calib, config, progress=False)
    assert results[True].extra["bias_corrected"] == ["fc2"] and results[False].extra["bias_corrected"] == []
    fc2 = results[False].model.fc2
    delta = (fc2.weight - fc2.parametrizations.weight.original).detach()
    assert torch.equal(delta, (results[True].model.fc2.weight - fc2.parametrizations.weight.original).detach())
    z = model.bn.bias.detach() + model.bn.weight.detach() * torch.randn(200_000, 16,
                                                                       generator=torch.Generator().manual_seed(0))
    shift = (torch.relu(z) @ delta.T).mean(dim=0)  # the output's mean shift from quantizing fc2
    correction = fc2.bias.detach() - results[True].model.fc2.bias.detach()
    assert float(shift.abs().max()) > 0.02  # the test can fail: the shift is there to correct
    # Monte-Carlo mean of 2e5 samples: per-sample shift std ~ 0.2, standard error ~ 5e-4; 3e-3 is 6 sigma
    torch.testing.assert_close(correction, shift, rtol=0.0, atol=3e-3)


def test_equalize_option_of_the_config_runs_before_any_method():
    model = _dw_pw()
    x = torch.randn(8, 3, 8, 8)
    config = learnq.PTQ(method="minmax", wbits=8, abits=32, equalize=True)
    assert learnq.PTQ.from_dict(config.to_dict()) == config
    result = quantize(model, x, config, progress=False)
    assert result.extra["equalize"]["pairs"] == ["pw0->dw", "dw->pw", "pw->fc"]
    pairs = find_conv_bn_pairs(model)
    assert set(bn_statistics(model, pairs)) == {"pw0", "dw"}
    # 8-bit weights on equalized ranges: the output stays close to the float model's
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(result.model(x), ref, rtol=0.0, atol=0.05 * float(ref.abs().max()))


def test_a_recipe_variant_takes_equalize():
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from learnq.fields.ptq_config import PTQ_CONFIG_ATTR
    from learnq.pipeline.ptq_variants import PTQ_OPTIONS, apply_ptq
    from learnq.pipeline.sections import VariantSection

    x = torch.randn(16, 3, 8, 8)
    variant = VariantSection(method="squant", bits=4, abits=8, options={**PTQ_OPTIONS, "equalize": True})
    out = apply_ptq(_dw_pw(), SimpleNamespace(calib=TensorDataset(x, torch.zeros(16, dtype=torch.long))), variant, 0,
                    "cpu")
    config = getattr(out, PTQ_CONFIG_ATTR)
    assert config["equalize"] is True and config["method"] == "squant"


def test_tied_weights_are_not_equalized():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[2].weight = model[0].weight  # one Parameter in two layers: scaling it for one pair breaks the other use
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([[10.0], [1.0], [0.1], [1.0]]))
    x = torch.randn(8, 4)
    before = model(x).detach()
    assert [f"{p.first}->{p.second}" for p in find_pairs(model)] == ["0->2", "2->4"]
    assert equalize(model)["pairs"] == []
    assert torch.equal(model(x), before)
