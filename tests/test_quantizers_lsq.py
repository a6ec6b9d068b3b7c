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


def _adam_steps(step_lr: float | None, updates: int = 20) -> tuple[float, float, float]:
    """(initial step, step after ``updates`` Adam updates at the model's lr 3e-3, fraction of weights clipped) for a
    per-tensor LSQ 4-bit linear layer of GPT-init weights (std 0.02) under a loss that shrinks its output (so the
    step's gradient keeps one sign); the step's group from ``handle.param_groups(lr=step_lr)``."""
    import learnq

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
    torch.nn.init.normal_(layer[0].weight, 0.0, 0.02)
    x = torch.randn(256, 64)
    handle = learnq.prepare(layer, LSQ(bits=4, granularity="tensor"))
    q = next(iter(handle.quantizers.values()))
    s0 = float(q.step.detach())
    groups = [{"params": handle.split_parameters()[0]}, *handle.param_groups(lr=step_lr)]
    opt = torch.optim.Adam(groups, lr=3e-3)
    for _ in range(updates):
        loss = layer(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = float(q.step.detach())
    w = layer[0].parametrizations.weight.original.detach()
    clipped = float((w.abs() > max(s, 1e-12) * (q.qp + 0.5)).float().mean())
    return s0, s, clipped


def test_step_group_default_lr_keeps_adam_from_collapsing_the_step():
    """Adam cancels LSQ's gradient scale g (it divides by the gradient's RMS): at the model's lr the step (0.012)
    moves ~3e-3 per update and crosses zero within 20 updates, clipping every weight (the issue-16 failure);
    the step's default group lr (1e-5) moves it by at most 20·1e-5/0.012 = 1.7 %."""
    assert LSQ.default_lr == 1e-5
    import learnq

    assert learnq.prepare(torch.nn.Linear(4, 4), LSQ()).param_groups()[0]["lr"] == LSQ.default_lr
    s0, s, clipped = _adam_steps(step_lr=None)
    assert abs(s / s0 - 1) < 0.02 and clipped == 0.0
    s0, s, clipped = _adam_steps(step_lr=3e-3)  # the model's lr: what LSQ's group got before
    assert s < 0.1 * s0 and clipped > 0.9
