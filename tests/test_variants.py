"""learnq.pipeline.variants: the registry, option checks, and the float / minmax variants against hand computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from learnq.checks import check_options
from learnq.errors import ConfigError
from learnq.pipeline import registry as R
from learnq.pipeline import variants as V
from learnq.pipeline.recipe import parse_recipe
from learnq.quantized import quantized_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))


def _variant(text: str):
    return parse_recipe("[[variants]]\n" + text).variants[0]


def test_builtin_variants_are_registered():
    assert {"float", "minmax"} <= set(R.VARIANTS)
    assert R.VARIANTS["float"].quantizes is False and R.VARIANTS["minmax"].quantizes is True
    assert all(info.description and "\n" not in info.description for info in R.VARIANTS.values())


def test_register_refuses_a_taken_name_unless_replace(monkeypatch):
    monkeypatch.setattr(R, "VARIANTS", dict(R.VARIANTS))
    info = V.VariantInfo("minmax", "other", V.apply_float)
    with pytest.raises(ConfigError, match="already registered"):
        R.register_variant(info)
    assert R.register_variant(info, replace=True) is info and R.VARIANTS["minmax"] is info


def test_get_variant_and_get_qat_name_the_known_ones():
    with pytest.raises(ConfigError, match="unknown quantization method 'nope'; registered methods: float, minmax"):
        R.get_variant("nope")
    with pytest.raises(ConfigError, match="unknown QAT method 'nope'"):
        R.get_qat("nope")


def test_check_options():
    defaults = {"n": 2, "tau": 0.5, "flag": False, "anything": None}
    assert check_options(defaults, {"tau": 1, "anything": [1]}, "p") == {"n": 2, "tau": 1, "flag": False,
                                                                              "anything": [1]}
    with pytest.raises(ConfigError, match=r"p\.m: unknown option; this method's options are: n, tau, flag"):
        check_options(defaults, {"m": 1}, "p")
    with pytest.raises(ConfigError, match=r"p\.n: expected int, got bool"):
        check_options(defaults, {"n": True}, "p")
    with pytest.raises(ConfigError, match=r"p\.flag: expected bool, got int"):
        check_options(defaults, {"flag": 1}, "p")


def test_float_variant_changes_nothing():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    out = R.apply_variant(model, None, _variant('method = "float"'), 0, "cpu")
    assert out is model
    for k, v in out.state_dict().items():
        assert torch.equal(v, before[k])


def test_minmax_per_channel_symmetric_matches_hand_computation():
    model = _model()
    w = model[1].weight.detach().clone()
    R.apply_variant(model, None, _variant('method = "minmax"\nbits = 4'), 0, "cpu")
    assert sorted(dict(quantized_parameters(model))) == ["1.weight", "3.weight"]
    step = w.abs().amax(dim=1, keepdim=True) / 7  # symmetric 4 bits: levels -8..7, alpha = max|w| of the row
    expected = torch.clamp(torch.round(w / step), -8, 7) * step
    torch.testing.assert_close(model[1].weight, expected, rtol=0, atol=1e-6)
    assert float((model[1].weight - w).abs().max()) <= float(step.max()) / 2 + 1e-6
    assert torch.equal(model[1].bias, _model()[1].bias)  # biases stay float


def test_minmax_bits_overrides_and_selection():
    model = _model()
    v = _variant('method = "minmax"\nbits = 2\nbits_overrides = { "1.weight" = 8 }\ngranularity = "tensor"')
    R.apply_variant(model, None, v, 0, "cpu")
    q = dict(quantized_parameters(model))
    assert (q["1.weight"].bits, q["3.weight"].bits) == (8, 2)
    assert torch.unique(model[3].weight).numel() <= 4  # 2 bits: at most 4 levels in the whole tensor
    model = _model()
    R.apply_variant(model, None, _variant('method = "minmax"\nbits = 4\nselect = { skip_last = true }'), 0, "cpu")
    assert sorted(dict(quantized_parameters(model))) == ["1.weight"]
