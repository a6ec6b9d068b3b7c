"""The eval forward of the activation quantizers (issue 12: one precomputed plan, fused in-place operations) gives
:func:`learnq.act.base.fake_quantize`'s values, which the forward computed before: both apply the same float32
operations to the same numbers, so the outputs are compared with ``torch.equal`` (equal values; +0.0 == -0.0)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import learnq
from learnq.act import PACT, ActQuantizer, ObserverFakeQuant, fake_quantize
from learnq.act.input_quant import input_quantizers


def _calibrated(bits: int, signed: bool | None, per_channel: bool, alpha) -> ActQuantizer:
    q = ActQuantizer(bits, signed=signed, per_channel=per_channel)
    q.signed = bool(signed)
    q.set_alpha(alpha)
    q.enabled = True
    return q


CASES = [(8, False, False, 2.5), (4, True, False, 1.7), (1, True, False, 0.9), (3, False, True, [0.5, 0.0, 2.0, 1.1]),
         (8, True, True, [1.0, 2.0, 3.0, 4.0]), (4, False, False, 0.0)]


@pytest.mark.parametrize("bits,signed,per_channel,alpha", CASES)
def test_input_quantizer_eval_equals_fake_quantize(bits, signed, per_channel, alpha):
    q = _calibrated(bits, signed, per_channel, alpha)
    x = torch.randn(16, 4, 5, 5, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        got = q(x)
        assert torch.equal(got, fake_quantize(x, q.grid()))
        assert torch.equal(q(x), got)  # the plan, reused
        assert torch.equal(q(x.half()), fake_quantize(x.half(), q.grid()))  # another dtype


def test_the_plan_follows_every_change_of_the_quantizer():
    q = _calibrated(4, False, False, 2.0)
    x = torch.rand(64, 8) * 3
    with torch.no_grad():
        before = q(x)
        q.set_alpha(1.0)  # a new buffer
        assert torch.equal(q(x), fake_quantize(x, q.grid())) and not torch.equal(q(x), before)
        q.alpha.mul_(2)  # in place
        assert torch.equal(q(x), fake_quantize(x, q.grid()))
        q.bits = 2  # an attribute
        assert torch.equal(q(x), fake_quantize(x, q.grid()))
        q.load_state_dict({"alpha": torch.tensor(0.3)})
        assert torch.equal(q(x), fake_quantize(x, q.grid()))
        q.enabled = False
        assert q(x) is x
        q.enabled = True
        other = copy.deepcopy(q)
        other.alpha.fill_(5.0)
        assert torch.equal(other(x), fake_quantize(x, other.grid())) and torch.equal(q(x), fake_quantize(x, q.grid()))


def test_pact_and_observer_eval_equal_fake_quantize():
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(2)) * 3
    pact = PACT(4, 2.0).eval()
    obs = ObserverFakeQuant(8).train()
    obs(x.relu() - 0.3)  # observe a range with a negative minimum: a zero point
    obs.eval()
    for q in (pact, obs):
        with torch.no_grad():
            assert torch.equal(q(x), fake_quantize(x, q.grid()))
    opt = torch.optim.SGD(pact.parameters(), lr=0.5)
    pact.train()
    pact(x).sum().backward()
    opt.step()  # α changes in place: the eval plan must see it
    pact.eval()
    with torch.no_grad():
        assert torch.equal(pact(x), fake_quantize(x, pact.grid()))


def test_ptq_model_outputs_equal_the_unfused_forward(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 10), nn.Tanh(), nn.Linear(10, 3))
    calib = torch.randn(128, 36)
    result = learnq.ptq.quantize(model, calib, method="mse", wbits=4, abits=4, progress=False)
    x = torch.randn(64, 36, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = result.model(x)
        monkeypatch.setattr(ActQuantizer, "quantize_eval",
                            lambda self, t: fake_quantize(t, self.grid()) if self.enabled else t)
        slow = result.model(x)
    assert torch.equal(fast, slow)  # the same kernels on the same inputs: equal outputs
    assert any(q.signed for q in input_quantizers(result.model).values())  # the Tanh output: a signed grid
