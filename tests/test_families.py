"""The one weight-parametrization base (learnq.parametrization) and the one activation-quantizer family (learnq.act):
the shared cache, forward and export of every member, by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import learnq
from learnq.act import PACT, WRAPPER_METHODS, ActGrid, ActQuantizer, ObserverFakeQuant, fake_quantize
from learnq.export.qdq import plan_activation
from learnq.grid import GridSpec, quantize_tensor
from learnq.parametrization import WeightParametrization
from learnq.ptq import PTQWeight
from learnq.quantized import QuantizedWeight


def test_fake_quantize_by_hand():
    grid = ActGrid(scale=torch.tensor(0.5), offset=torch.tensor(0.0), zero_point=torch.tensor(2.0), qmin=0, qmax=7)
    x = torch.tensor([-2.0, -0.6, 0.1, 0.8, 3.0])
    # codes round(x/0.5) + 2 clamped to [0, 7], back: (q - 2)·0.5
    assert fake_quantize(x, grid).tolist() == [-1.0, -0.5, 0.0, 1.0, 2.5]
    per_channel = ActGrid(scale=torch.tensor([1.0, 0.0]), offset=torch.zeros(2), zero_point=torch.zeros(2), qmin=-2,
                          qmax=1, channel_axis=1)
    y = torch.tensor([[0.4, 5.0], [-3.0, 1.0]])
    assert fake_quantize(y, per_channel).tolist() == [[0.0, 0.0], [-2.0, 0.0]]  # scale 0: the channel is 0


def _calibrated_input_quantizer() -> ActQuantizer:
    q = ActQuantizer(4, signed=True, per_channel=True)
    q.set_alpha(torch.tensor([1.0, 2.0, 0.5]))
    q.enabled = True
    return q


def _observer() -> ObserverFakeQuant:
    obs = ObserverFakeQuant(6)
    obs(torch.tensor([-0.8, 3.1]))
    return obs.eval()


@pytest.mark.parametrize("make", [_calibrated_input_quantizer, lambda: PACT(5, 1.7).eval(), _observer])
def test_every_activation_quantizer_is_the_family_forward_on_its_grid_and_exports_it(make):
    q = make()
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        assert torch.equal(q(x), fake_quantize(x, q.grid()))
    plan = plan_activation(q, "q")
    grid = q.grid()
    assert (plan.qmin, plan.qmax, plan.channel_axis) == (grid.qmin, grid.qmax, grid.channel_axis)
    assert torch.equal(torch.from_numpy(plan.scale), grid.scale.float().reshape(plan.scale.shape))
    x.requires_grad_(True)
    y = q(x)  # with gradients: the same values, the straight-through gradient of the surrogate
    assert torch.equal(y.detach(), fake_quantize(x.detach(), grid))
    y.sum().backward()
    assert torch.equal(x.grad, torch.autograd.grad(q.surrogate(x).sum(), x)[0])


@pytest.mark.parametrize("method", list(WRAPPER_METHODS))
def test_every_wrapper_method_records_and_restores_its_values(method):
    build = WRAPPER_METHODS[method].build
    q = build(nn.ReLU(), 4, "cpu", init_clip=2.5)
    q.train()
    q(torch.linspace(-1, 3, 9))
    record = q.record("act")
    fresh = build(nn.ReLU(), 4, "cpu", init_clip=1.0)
    fresh.load_record(record)
    x = torch.linspace(-2, 4, 31)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), q.eval()(x)) and fresh.record("act") == record


def test_one_base_one_cache_for_qat_ptq_and_frozen_weights():
    w = nn.Parameter(torch.randn(5, 8, generator=torch.Generator().manual_seed(3)))
    spec = GridSpec(4, granularity="channel")
    ptq = PTQWeight(spec, w.detach().abs().amax(dim=1))
    frozen = QuantizedWeight(quantize_tensor(w.detach(), spec))
    ste = learnq.STE(bits=4).build("w", w.detach(), None).eval()
    with torch.no_grad():  # (with gradients a QAT quantizer returns a straight-through view of the cached tensor)
        for p in (ptq, frozen, ste):
            assert isinstance(p, WeightParametrization)
            first = p(w)
            assert torch.equal(first, p.export_quantized(w).dequantize()) and p(w) is first and p.computations == 1
        w.data = w.data * 2  # new storage through .data: seen by every member (PTQWeight's weakref cache missed it)
        assert torch.equal(ptq(w), ptq.export_quantized(w).dequantize()) and ptq.computations == 2
        assert torch.equal(ste(w), ste.export_quantized(w).dequantize()) and ste.computations == 2
        frozen(w).add_(1.0)  # the cached tensor written in place: recomputed from the codes
        assert torch.equal(frozen(w), frozen.quantized().dequantize()) and frozen.computations == 2
