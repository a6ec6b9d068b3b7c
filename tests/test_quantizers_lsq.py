"""LSQ (learnq.quantizers.lsq): init, forward, weight and step gradients against the formulas of Esser et al. 2020."""

from __future__ import annotations

import math

import pytest
import torch

from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers import LSQ, LSQQuantizer


def _hand_step_grad(w: torch.Tensor, s: float, upstream: torch.Tensor, qn: int, qp: int) -> float:
    v = w / s
    inside = (v > -qn) & (v < qp)
    d = torch.where(inside, torch.round(v) - v, torch.where(v <= -qn, torch.full_like(v, -qn), torch.full_like(v, qp)))
    return float((upstream * d).sum()) / math.sqrt(w.numel() * qp)


def test_init_forward_and_gradients_per_tensor():
    w = torch.tensor([[0.31, -0.9, 0.05], [1.7, -0.12, 0.44]], dtype=torch.float64)
    q = LSQQuantizer(w, bits=3, granularity=Granularity("tensor"))
    qn, qp = 4, 3
    s0 = 2 * float(w.abs().mean()) / math.sqrt(qp)
    assert q.step.item() == pytest.approx(s0, rel=1e-6)
    s = 0.3
    with torch.no_grad():
        q.step.fill_(s)
    x = w.clone().float().requires_grad_(True)
    y = q(x)
    expected = torch.clamp(torch.round(w / s), -qn, qp) * s
    assert torch.allclose(y.double(), expected, atol=1e-6)
    upstream = torch.tensor([[0.5, -1.0, 2.0], [0.25, 1.5, -0.75]])
    (y * upstream).sum().backward()
    v = w / s  # 1.03, -3, 0.17, 5.67 (clipped), -0.4, 1.47
    inside = ((v > -qn) & (v < qp)).float()
    assert torch.allclose(x.grad, upstream * inside)
    assert q.step.grad.item() == pytest.approx(_hand_step_grad(w.float(), s, upstream, qn, qp), rel=1e-5)


def test_per_channel_steps_have_their_own_gradient_scale():
    torch.manual_seed(0)
    w = torch.randn(3, 5)
    q = LSQQuantizer(w, bits=4, granularity=Granularity.parse("channel"))
    assert q.step.shape == (3,)
    x = w.clone().requires_grad_(True)
    upstream = torch.randn(3, 5)
    (q(x) * upstream).sum().backward()
    for c in range(3):
        hand = _hand_step_grad(w[c], float(q.step[c].detach()), upstream[c], 8, 7)
        assert q.step.grad[c].item() == pytest.approx(hand, rel=1e-4, abs=1e-7)


def test_export_matches_eval_forward_bit_for_bit():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 6))
    q = LSQQuantizer(w.detach(), bits=2, granularity=Granularity("tensor")).eval()
    qt = q.export_quantized(w.detach())
    assert qt.bits == 2 and qt.qmin == -2 and int(qt.codes.min()) >= -2 and int(qt.codes.max()) <= 1
    assert torch.equal(qt.dequantize(), q(w))
    assert q.true_size_bits() == 24 * 2 + 32


def test_config_validation():
    with pytest.raises(ConfigError, match="LSQ.bits"):
        LSQ(bits=1)
    with pytest.raises(ConfigError, match="LSQ.granularity"):
        LSQ(granularity="column")
    with pytest.raises(ConfigError, match="bits_overrides"):
        LSQ(bits_overrides={"*": 1})
    assert LSQ(bits=3).build("w", torch.ones(2, 2), None).bits == 3
    assert LSQ(bits=3).build("w", torch.ones(2, 2), 8).bits == 8
