"""STE fake-quant QAT (learnq.quantizers.ste): grid values and gradients by hand, config validation and JSON."""

from __future__ import annotations

import pytest
import torch

from learnq.attach import Selection
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers import QAT_METHODS, STE, QATConfig, STEQuantizer, fake_quantize_ste


def test_affine_per_tensor_values_and_identity_gradient():
    w = torch.tensor([[-1.0, -0.2, 0.0], [0.3, 0.5, 2.0]], requires_grad=True)
    q = STEQuantizer((2, 3), bits=2, granularity=Granularity("tensor"))
    y = q(w)
    # range [-1, 2], 3 steps of 1.0: levels -1, 0, 1, 2
    assert y.tolist() == [[-1.0, 0.0, 0.0], [0.0, 1.0, 2.0]]
    weights = torch.arange(6.0).reshape(2, 3)
    (y * weights).sum().backward()
    assert torch.equal(w.grad, weights)  # straight through, unclipped
    qt = q.export_quantized(w.detach())
    assert qt.codes.tolist() == [[0, 1, 1], [1, 2, 3]] and qt.bits == 2 and qt.qmin == 0 and qt.scheme == "affine"
    assert torch.equal(qt.dequantize(), y.detach())


def test_symmetric_per_channel_values():
    w = torch.tensor([[0.7, -0.35, 0.1], [4.0, -2.0, 1.1]])
    q = STEQuantizer((2, 3), bits=3, granularity=Granularity.parse("channel"), scheme="symmetric")
    y = q(w)
    # row 0: Δ = 0.7/3, row 1: Δ = 4/3
    d0, d1 = 0.7 / 3, 4.0 / 3
    expected = torch.tensor([[3 * d0, -2 * d0, 0.0], [3 * d1, -2 * d1, 1 * d1]])  # -0.35/Δ0 = -1.5 -> -2 (even)
    assert torch.allclose(y, expected, atol=1e-6)
    qt = q.export_quantized(w)
    assert qt.qmin == -4 and qt.scheme == "symmetric" and qt.scale.shape == (2,)
    assert qt.codes.tolist() == [[3, -2, 0], [3, -2, 1]]


def test_constant_tensor_and_bias_use_one_exact_step():
    w = torch.full((4,), 0.25)
    q = STEQuantizer((4,), bits=4, granularity=Granularity.parse("channel"))
    assert q.granularity.kind == "tensor"  # 1-D: one step
    assert torch.equal(q(w), w)
    assert q.true_size_bits() == 4 * 4 + 64


def test_true_size_counts_steps_per_group():
    q = STEQuantizer((8, 5), bits=3, granularity=Granularity.parse("channel"), scheme="symmetric")
    assert q.true_size_bits() == 40 * 3 + 8 * 32


def test_fake_quantize_ste_fixed_range():
    w = torch.tensor([0.11, 0.5, 1.2], requires_grad=True)
    y = fake_quantize_ste(w, 4, 0.0, 1.0)
    assert torch.allclose(y, torch.tensor([2 / 15, 8 / 15, 1.0]))  # 0.11·15 = 1.65 -> 2; 7.5 -> 8 (ties to even)
    y.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="STE.bits"):
        STE(bits=0)
    with pytest.raises(ConfigError, match="STE.granularity"):
        STE(granularity="group:8")
    with pytest.raises(ConfigError, match="STE.scheme"):
        STE(scheme="lapq")
    with pytest.raises(ConfigError, match="bits_overrides"):
        STE(bits_overrides={"fc.*": 17})


def test_config_json_round_trip_and_registry():
    cfg = STE(bits=3, granularity="channel", bits_overrides={"0.weight": 8})
    data = cfg.to_dict()
    assert data["method"] == "ste" and data["bits_overrides"] == {"0.weight": 8}
    assert QATConfig.from_dict(data) == cfg
    assert STE.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="no field"):
        QATConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ConfigError, match="unknown"):
        QATConfig.from_dict({"method": "nope"})
    with_sel = STE(selection=Selection(skip_first=True, include=("fc*",)))
    assert QATConfig.from_dict(with_sel.to_dict()) == with_sel
    assert QATConfig.from_dict({"method": "ste", "selection": {"biases": True}}).selection == Selection(biases=True)
    with pytest.raises(ConfigError, match="selection"):
        STE.from_dict({"selection": {"bogus": 1}})
    assert set(QAT_METHODS) == {"ste", "lsq", "nested", "diffq", "dkm", "dorefa", "quant_noise", "ipq",
                                 "ipq_layerwise"}
    assert all(cls.description for cls in QAT_METHODS.values())
