"""Quant-Noise (learnq.quantizers.quant_noise): block mask rate and structure, float value and exact gradient on the
unselected blocks, the quantized value with a straight-through gradient on the selected ones, eval fully quantized."""

from __future__ import annotations

import math

import pytest
import torch

import learnq
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers import QAT_METHODS, QuantNoise, QuantNoiseQuantizer, STEQuantizer
from learnq.quantizers.quant_noise import block_mask


def test_block_mask_rate_and_blocks():
    torch.manual_seed(0)
    shape, bs, p = (300, 40), 8, 0.15  # 1500 blocks of 8
    masks = torch.stack([block_mask(shape, bs, p) for _ in range(40)])
    blocks = masks.reshape(40, -1, bs)
    assert bool((blocks == blocks[..., :1]).all())  # a block is selected whole
    n = blocks.shape[0] * blocks.shape[1]  # 60000 Bernoulli(p) draws
    rate = float(blocks[..., 0].float().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations (0.0073)
    assert not torch.equal(masks[0], masks[1])  # a new subset every step


def test_partial_last_block_and_extreme_rates():
    m = block_mask((3, 5), 4, 1.0)
    assert bool(m.all()) and m.shape == (3, 5)
    assert not bool(block_mask((3, 5), 4, 0.0).any())
    torch.manual_seed(3)
    flat = torch.stack([block_mask((13,), 4, 0.5) for _ in range(50)]).reshape(50, 13)
    assert bool((flat[:, 12:] == flat[:, 12:13]).all())  # the 13th value is a block of its own


def test_unselected_blocks_pass_the_float_value_and_exact_gradient():
    torch.manual_seed(2)
    w = torch.randn(20, 16)
    q = QuantNoiseQuantizer((20, 16), bits=4, granularity=Granularity("tensor"), scheme="affine", rate=0.3,
                            block_size=4)
    ref = STEQuantizer((20, 16), bits=4, granularity=Granularity("tensor"))
    quantized = ref.quantized_value(w)
    torch.manual_seed(5)
    mask = block_mask((20, 16), 4, 0.3)
    torch.manual_seed(5)  # the quantizer draws the same mask
    x = w.clone().requires_grad_(True)
    y = q(x)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(y[~mask], w[~mask])  # float value, bit for bit
    assert torch.equal(y[mask], quantized[mask])  # the int4 value of the tensor's min-max grid
    # gradient of sum(c·y): exact (c) on float blocks; straight through (c) on quantized ones (min-max: no clipping)
    c = torch.randn(20, 16)
    (y * c).sum().backward()
    assert torch.equal(x.grad, c)
    # a nonlinear loss: the float blocks get the gradient of the float value, the others the one at the quantized
    x.grad = None
    torch.manual_seed(5)
    y = q(x)
    (y**2).sum().backward()
    assert torch.equal(x.grad[~mask], 2 * w[~mask]) and torch.equal(x.grad[mask], 2 * quantized[mask])


def test_eval_quantizes_everything_like_ste():
    torch.manual_seed(4)
    w = torch.randn(6, 10)
    q = QuantNoiseQuantizer((6, 10), bits=8, granularity=Granularity.parse("channel"), scheme="symmetric",
                            rate=0.0, block_size=8)
    ste = STEQuantizer((6, 10), bits=8, granularity=Granularity.parse("channel"), scheme="symmetric")
    assert torch.equal(q(w), w)  # rate 0 in training: float
    q.eval()
    assert torch.equal(q(w), ste.quantized_value(w))
    qt = q.export_quantized(w)
    assert qt.method == "quant_noise" and qt.bits == 8 and torch.equal(qt.dequantize(), q(w))
    assert q.true_size_bits() == ste.true_size_bits()


def test_rate_one_is_ste_qat():
    w = torch.randn(4, 9)
    q = QuantNoiseQuantizer((4, 9), bits=3, granularity=Granularity("tensor"), scheme="affine", rate=1.0,
                            block_size=2)
    assert torch.equal(q(w), STEQuantizer((4, 9), 3, Granularity("tensor")).quantized_value(w))


def test_config_validation_and_registry():
    assert QAT_METHODS["quant_noise"] is QuantNoise and learnq.QuantNoise is QuantNoise
    cfg = QuantNoise(bits=4, rate=0.2, block_size=4)
    assert QuantNoise.from_dict(cfg.to_dict()) == cfg
    for bad, match in [({"rate": 1.5}, "rate"), ({"rate": -0.1}, "rate"), ({"block_size": 0}, "block_size"),
                       ({"quantizer": "pq"}, "quantizer"), ({"granularity": "group:4"}, "granularity")]:
        with pytest.raises(ConfigError, match=match):
            QuantNoise(**bad)


def test_prepared_model_one_mask_per_forward_for_tied_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), lin)
    learnq.prepare(model, QuantNoise(bits=2, rate=0.5, block_size=1))
    quantizer = model[0].parametrizations.weight[0]
    seen = []
    quantizer.register_forward_hook(lambda mod, args, out: seen.append(out))
    model(torch.randn(3, 8))
    assert len(seen) >= 1 and all(s is seen[0] for s in seen)  # one noise sample per forward, shared by both uses
