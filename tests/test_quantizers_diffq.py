"""DiffQ (learnq.quantizers.diffq): noise statistics, bits gradients, Eq. 8 and Eq. 12 by hand, 15/16-bit groups
through the model file, partial groups, constant tensors, tied weights, unused and frozen parameters, eval cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import learnq
from learnq.errors import ConfigError
from learnq.quantizers import DiffQ, DiffQQuantizer
from learnq.quantizers.diffq import MB_BITS


def _set_bits(q: DiffQQuantizer, bits: list[float]) -> None:
    t = (torch.tensor(bits) - q.b_min) / (q.b_max - q.b_min)
    with torch.no_grad():
        q.logits.copy_(torch.logit(t))


def _ranged(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g) * 2 - 1
    w[0], w[1] = -1.0, 1.0  # range exactly [-1, 1]
    return w


def test_init_bits_groups_and_partial_group_counts():
    q = DiffQQuantizer(torch.randn(5, 6), group_size=8, init_bits=8.0)
    assert q.logits.shape == (4,)  # 30 weights: 8 + 8 + 8 + 6
    assert q.group_counts.tolist() == [8, 8, 8, 6]
    assert q.bits().tolist() == pytest.approx([8.0] * 4, abs=1e-5)
    assert DiffQQuantizer(torch.randn(5, 6), group_size=0).logits.shape == (1,)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_noise_statistics(noise):
    torch.manual_seed(0)
    w = _ranged(200_000)
    q = DiffQQuantizer(w, group_size=100_000, b_min=2, b_max=15, init_bits=8.0, noise=noise)
    _set_bits(q, [4.0, 6.0])  # Δ = 2/15 on the first half, 2/63 on the second
    q.train()
    with torch.no_grad():
        eps = (q(w) - w).reshape(2, -1)
    for half, bits in enumerate([4, 6]):
        half_delta = 2 / (2**bits - 1) / 2
        e = eps[half] / half_delta
        assert abs(float(e.mean())) < 0.01
        if noise == "gaussian":
            assert float(e.std()) == pytest.approx(1.0, rel=0.01)
        else:
            assert float(e.std()) == pytest.approx(1 / math.sqrt(3), rel=0.01)
            assert float(e.abs().max()) <= 1.0 + 1e-5


def test_size_term_gradient_matches_finite_differences():
    q = DiffQQuantizer(torch.randn(30), group_size=8, b_min=2, b_max=15)
    _set_bits(q, [3.3, 7.0, 11.2, 14.0])
    q.logits.data = q.logits.data.double()
    q.group_counts = q.group_counts.double()
    q.size_bits().backward()
    h = 1e-6
    for i in range(4):
        base = q.logits.data.clone()
        q.logits.data[i] += h
        up = float(q.size_bits().detach())
        q.logits.data[i] -= 2 * h
        down = float(q.size_bits().detach())
        q.logits.data.copy_(base)
        assert q.logits.grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-6)


def test_task_bits_gradient_matches_finite_differences_with_fixed_noise():
    torch.manual_seed(0)
    w = torch.randn(24)
    target = torch.randn(24)
    q = DiffQQuantizer(w, group_size=8, init_bits=4.0).train()

    def loss() -> torch.Tensor:
        torch.manual_seed(123)  # the same noise sample every time
        return ((q(w) - target) ** 2).sum()

    loss().backward()
    h = 1e-2
    for i in range(3):
        base = q.logits.data.clone()
        q.logits.data[i] += h
        up = float(loss().detach())
        q.logits.data[i] -= 2 * h
        down = float(loss().detach())
        q.logits.data.copy_(base)
        assert q.logits.grad[i].item() == pytest.approx((up - down) / (2 * h), rel=2e-3, abs=1e-6)


def test_eq8_and_eq12_by_hand():
    model = nn.Linear(10, 3)  # weight: 30 values, groups 8, 8, 8, 6
    handle = learnq.prepare(model, DiffQ(group_size=8))
    q = handle.quantizers["weight"]
    assert handle.size_mb(include_float=False).item() == pytest.approx(30 * 8 / MB_BITS)  # Eq. 8 at 8 bits
    assert handle.size_mb().item() == pytest.approx((30 * 8 + 3 * 32) / MB_BITS)  # + the float bias
    _set_bits(q, [2.2, 5.1, 7.9, 14.8])  # b̃ = 2, 5, 8, 15
    assert q.rounded_bits().tolist() == [2.0, 5.0, 8.0, 15.0]
    # Eq. 12: 2·32 + 8 + 4 groups · ceil(log2(1 + 15 - 2)) + (8·2 + 8·5 + 8·8 + 6·15)
    assert q.true_size_bits() == 64 + 8 + 4 * 4 + 210
    assert handle.true_size_mb(include_float=False) == pytest.approx(298 / MB_BITS)
    eq8 = (8 * 2.2 + 8 * 5.1 + 8 * 7.9 + 6 * 14.8) / MB_BITS  # Eq. 8 uses the real-valued bits
    assert handle.size_mb(include_float=False).item() == pytest.approx(eq8, rel=1e-5)


def test_15_and_16_bit_groups_and_partial_group_round_trip_through_the_model_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))  # 20 weights: groups 8, 8, 4 (partial)
    handle = learnq.prepare(model, DiffQ(group_size=8, b_max=16))
    q = handle.quantizers["0.weight"]
    _set_bits(q, [15.2, 15.9, 3.0])
    model.eval()
    qt = q.export_quantized()
    assert qt.group_bits.tolist() == [15, 16, 3] and qt.bits == 16
    stored = qt.granularity.view(qt.stored_codes())
    assert int(stored[0].max()) <= 2**15 - 1 and int(stored[2].max()) <= 7
    x = torch.randn(7, 5)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(qt.dequantize(), model[0].weight)
    learnq.save(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(5, 4))
    learnq.load(tmp_path / "m.safetensors", fresh)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_constant_tensor_has_no_noise_and_is_stored_exactly():
    w = torch.full((3, 4), 0.75, requires_grad=True)
    q = DiffQQuantizer(w.detach(), group_size=5).train()
    y = q(w)
    assert torch.equal(y, w.detach())
    y.sum().backward()
    assert torch.isfinite(q.logits.grad).all() and torch.isfinite(w.grad).all()
    q.eval()
    qt = q.export_quantized(w.detach())
    assert torch.equal(qt.dequantize(), w.detach()) and torch.equal(q(w.detach()), w.detach())


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.dec = nn.Linear(6, 6, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.relu(self.enc(x)))


def test_tied_weights_share_one_logit_and_one_noise_sample():
    torch.manual_seed(0)
    model = _Tied()
    raw = model.enc.weight.detach().clone()
    handle = learnq.prepare(model, DiffQ(group_size=4))
    assert list(handle.quantizers) == ["enc.weight"] and handle.aliases == {"dec.weight": "enc.weight"}
    assert len(handle.quantizer_parameters()) == 1
    seen: dict[str, torch.Tensor] = {}
    for name in ("enc", "dec"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, m.weight.detach().clone()))
    model.train()
    x = torch.randn(3, 6)
    model(x).sum().backward()
    assert torch.equal(seen["enc"], seen["dec"]) and not torch.equal(seen["enc"], raw)
    first = seen["enc"]
    assert handle.quantizers["enc.weight"].logits.grad is not None
    model(x)
    assert not torch.equal(seen["enc"], first)  # a new sample at the next forward


class _TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(4, 2)
        self.use_b = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + (self.b(x) if self.use_b else 0)


def test_unused_and_frozen_parameters_get_no_bits_gradient():
    torch.manual_seed(0)
    model = _TwoBranch()
    handle = learnq.prepare(model, DiffQ(group_size=4, penalty=1.0))
    qa, qb = handle.quantizers["a.weight"], handle.quantizers["b.weight"]
    x = torch.randn(5, 4)
    loss = model(x).pow(2).mean() + handle.loss()
    loss.backward()
    assert qa.logits.grad is not None and bool((qa.logits.grad != 0).all())
    assert qb.logits.grad is None  # b was not used: the size penalty does not reach its bits
    qa.logits.grad = None
    model.use_b = True
    model.b.parametrizations.weight.original.requires_grad_(False)  # frozen
    (model(x).pow(2).mean() + handle.loss()).backward()
    assert qb.logits.grad is None and qa.logits.grad is not None


def test_eval_forward_is_cached_until_the_weight_changes():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    handle = learnq.prepare(model, DiffQ(group_size=8))
    q = handle.quantizers["weight"]
    calls = []
    original_grid = q._grid
    q._grid = lambda x: calls.append(1) or original_grid(x)  # type: ignore[method-assign]
    model.eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert len(calls) == 1 and torch.equal(a, b)
    with torch.no_grad():
        model.parametrizations.weight.original.add_(0.5)  # an optimizer step bumps the version
        c = model(x)
    assert len(calls) == 2 and not torch.equal(a, c)
    model.train()
    model.eval()
    with torch.no_grad():
        model(x)
    assert len(calls) == 3


def test_fixed_bits_override_and_config_validation():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    handle = learnq.prepare(model, DiffQ(group_size=4, bits_overrides={"0.weight": 8}))
    q0 = handle.quantizers["0.weight"]
    assert q0.logits is None and q0.true_size_bits() == 64 + 16 * 8
    assert len(handle.quantizer_parameters()) == 1
    with pytest.raises(ConfigError, match="init_bits"):
        DiffQ(init_bits=2.0)
    with pytest.raises(ConfigError, match="b_max"):
        DiffQ(b_min=8, b_max=8)
    with pytest.raises(ConfigError, match="DiffQ.noise"):
        DiffQ(noise="laplace")
    with pytest.raises(ConfigError, match="DiffQ.group_size"):
        DiffQ(group_size=-1)


@pytest.mark.parametrize("rows", [(4, 8), (1, 32)], ids=["groups", "one-group"])
def test_fused_pseudo_quantization_matches_the_plain_autograd_graph(rows):
    """The fused node of the training forward (_PseudoQuantFn, for speed) has the values and gradients of
    ``w + (max(w) - min(w))/(2^b - 1)/2 · ε``, ``b = b_min + σ(l)·span``, differentiated by autograd, and passes
    gradcheck in float64; with ``span = 0`` its second input is a fixed bit-width."""
    from learnq.quantizers.diffq import _PseudoQuantFn

    torch.manual_seed(0)
    w = (torch.randperm(32).double() / 7 - 2).requires_grad_()  # distinct values: one argmin, one argmax
    logits = torch.randn(rows[0], dtype=torch.float64).requires_grad_()
    eps = torch.randn(32, dtype=torch.float64)
    upstream = torch.randn(32, dtype=torch.float64)
    fused = _PseudoQuantFn.apply(w, logits, eps, rows, 2.0, 13.0)
    lo, hi = torch.aminmax(w)
    bits = 2 + torch.sigmoid(logits) * 13
    plain = w + ((hi - lo) / (2**bits - 1) / 2).repeat_interleave(rows[1]) * eps
    assert torch.allclose(fused, plain, rtol=0, atol=1e-14)
    g_fused = torch.autograd.grad(fused, (w, logits), upstream)
    g_plain = torch.autograd.grad(plain, (w, logits), upstream)
    for a, b in zip(g_fused, g_plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w_, l_: _PseudoQuantFn.apply(w_, l_, eps, rows, 2.0, 13.0), (w, logits))
    fixed = _PseudoQuantFn.apply(w, torch.full((1,), 4.0, dtype=torch.float64), eps, (1, 32), 0.0, 0.0)
    assert torch.allclose(fixed, w + (hi - lo) / 15 / 2 * eps, rtol=0, atol=1e-14)


def test_grid_of_full_groups_equals_the_per_element_formula():
    """_grid broadcasts the steps over the (n_groups, g) view for full groups: the codes must be the per-element
    formula round((w - lo) / scale_s) clamped to [0, 2^b_s - 1], bit for bit."""
    from learnq.grid import range_group_params

    torch.manual_seed(4)
    w = torch.randn(12, 16)
    q = DiffQQuantizer(w, group_size=8)
    with torch.no_grad():
        q.logits.copy_(torch.randn(q.logits.shape) * 3)
    codes, scale, offset, gran = q._grid(w)
    lo, hi = torch.aminmax(w)
    b = q.rounded_bits()
    params = range_group_params(lo, hi, b)
    expected = torch.round((w - lo) / gran.expand(params.scale, w.shape)).clamp_(min=0)
    expected = torch.minimum(expected, gran.expand(2**b - 1, w.shape)).to(torch.int32)
    assert torch.equal(codes, expected) and torch.equal(scale, params.scale) and torch.equal(offset, params.offset)
