"""The nested quantization layer (learnq.quantizers.nested, thesis Sec. 3.1): forward, the straight-through
gradient to P, the gradient-ratio rule for s computed by hand, init, bounds and export."""

from __future__ import annotations

import math

import pytest
import torch

from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers import Nested, NestedQuantizer
from learnq.quantizers.nested import REFERENCE_SCALE

# P/s with s = 0.125: [[4.4, -2.4, 0.16], [8, 0, -5.6]] -> P_q = [[4, -3, 0], [8, 0, -6]]
P = [[0.55, -0.3, 0.02], [1.0, 0.0, -0.7]]
G = [[0.1, -0.05, 3.0], [0.2, 0.01, -0.4]]
LAM = 0.3
EPS = 1e-7


def _run(granularity: str, scale: list[float]) -> tuple[NestedQuantizer, torch.Tensor, torch.Tensor]:
    p = torch.tensor(P, requires_grad=True)
    q = NestedQuantizer(p.detach(), Granularity.parse(granularity), threshold=LAM, init_scale=1.0, eps=EPS)
    with torch.no_grad():
        q.scale.copy_(torch.tensor(scale))
    y = q(p)
    (y * torch.tensor(G)).sum().backward()
    return q, p, y


def _hand_votes() -> list[list[float]]:
    pq = [[4, -3, 0], [8, 0, -6]]
    votes = []
    for i in range(2):
        row = []
        for j in range(3):
            pr = pq[i][j] * 0.125
            r = abs(G[i][j]) / max(EPS, abs(pr))
            row.append(0.0 if r >= LAM else -math.tanh(LAM - r))
        votes.append(row)
    return votes


def test_forward_floor_and_straight_through_gradient_to_p():
    q, p, y = _run("tensor", [0.125])
    assert y.tolist() == [[0.5, -0.375, 0.0], [1.0, 0.0, -0.75]]
    assert torch.equal(p.grad, torch.tensor(G))


def test_scale_gradient_scalar_matches_hand_formula():
    q, _, _ = _run("tensor", [0.125])
    v = _hand_votes()
    # r = [0.2, 0.133, 3/eps, 0.2, 0.01/eps, 0.533]: three votes below λ = 0.3; m = max|P_q| = 8
    assert sum(x != 0 for row in v for x in row) == 3
    hand = sum(sum(row) for row in v) / 6 * 8
    assert q.scale.grad.item() == pytest.approx(hand, rel=1e-6)
    assert hand < 0  # descent grows s


def test_scale_gradient_row_and_column_match_hand_formula():
    v = _hand_votes()
    q, _, _ = _run("row", [0.125, 0.125])
    hand_rows = [sum(v[0]) / 3 * 4, sum(v[1]) / 3 * 8]  # m per row: max|P_q| = 4, 8
    assert q.scale.grad.tolist() == pytest.approx(hand_rows, rel=1e-6)
    q, _, _ = _run("column", [0.125, 0.125, 0.125])
    hand_cols = [(v[0][0] + v[1][0]) / 2 * 8, (v[0][1] + v[1][1]) / 2 * 3, (v[0][2] + v[1][2]) / 2 * 6]
    assert q.scale.grad.tolist() == pytest.approx(hand_cols, rel=1e-6)
    assert hand_cols[2] == 0.0  # every element of that column is sensitive: a zero vote


def test_threshold_zero_gives_the_scale_no_task_gradient():
    p = torch.tensor(P, requires_grad=True)
    q = NestedQuantizer(p.detach(), Granularity("tensor"), threshold=0.0, init_scale=0.125)
    (q(p) * torch.tensor(G)).sum().backward()
    assert q.scale.grad.item() == 0.0


def test_init_bounds_and_projection():
    w = torch.tensor([[0.5, -2.0], [0.25, 0.1]])
    q = NestedQuantizer(w, Granularity.parse("row"))  # default: within 16 bits
    assert q.scale.tolist() == pytest.approx([2.0 / 32767, REFERENCE_SCALE])  # 0.25/32767 is below the bound
    assert q.bits(w) <= 16
    q = NestedQuantizer(torch.zeros(5), Granularity.parse("row"))  # a zero bias: the lower bound, one scalar
    assert q.scale.shape == (1,) and q.scale.item() == pytest.approx(REFERENCE_SCALE)
    q = NestedQuantizer(w, Granularity("tensor"), init_scale=1e-9, min_scale=1e-3)
    assert q.scale.item() == pytest.approx(1e-3)
    with torch.no_grad():
        q.scale.fill_(-5.0)
    q.train()
    q(w)
    assert q.scale.item() == pytest.approx(1e-3)  # projected back before the training forward


def test_export_codes_bits_and_eval_equality():
    w = torch.nn.Parameter(torch.tensor(P))
    q = NestedQuantizer(w.detach(), Granularity("tensor"), init_scale=0.125).eval()
    qt = q.export_quantized(w.detach())
    assert qt.codes.tolist() == [[4, -3, 0], [8, 0, -6]]
    assert qt.qmin == -6 and qt.bits == 4  # 15 codes in [-6, 8]
    assert torch.equal(qt.dequantize(), q(w))
    assert q.true_size_bits(w.detach()) == 6 * 4 + 32


def test_scale_lower_bound_keeps_codes_within_max_bits():
    # max_bits = 4: s >= max|P| / 7; the tiny init_scale is raised to 0.875 / 7 = 0.125
    w = torch.nn.Parameter(torch.tensor([0.875, -0.875, 0.125]))
    q = NestedQuantizer(w.detach(), Granularity("tensor"), init_scale=1e-6, min_scale=1e-9, max_bits=4)
    assert q.scale.item() == 0.125
    qt = q.export_quantized(w.detach())
    assert qt.codes.tolist() == [7, -7, 1] and qt.bits == 4
    with torch.no_grad():  # the weights grow after the last training forward (an optimizer step): 1.75 / 7 = 0.25
        w[0] = 1.75
    qt = q.eval().export_quantized(w.detach())
    assert qt.scale.tolist() == [0.25] and qt.codes.tolist() == [7, -4, 0]  # floor(-3.5) = -4 = -2^3
    assert qt.bits == 4 and torch.equal(q(w), qt.dequantize())
    q.train()
    q(w)
    assert q.scale.item() == 0.25  # the training forward projects the stored scale onto the bound


def test_reference_init_on_large_weights_is_raised_to_16_bits():
    w = torch.tensor([50.0, -50.0])
    q = NestedQuantizer(w, Granularity("tensor"), init_scale=REFERENCE_SCALE)  # codes ±4.2e6 without the bound
    assert q.scale.item() == pytest.approx(50.0 / 32767, rel=1e-6)
    assert q.export_quantized(w).bits == 16


def test_at_the_bound_the_scale_gets_the_thesis_gradient_of_the_projected_scale():
    # P scaled to max|P| = 0.875: with max_bits = 4 the bound is 0.125, the scale of the hand computation above
    p_ref = (torch.tensor(P) * 0.875).requires_grad_()
    ref = NestedQuantizer(p_ref.detach(), Granularity("tensor"), threshold=LAM, init_scale=0.125, eps=EPS)
    (ref(p_ref) * torch.tensor(G)).sum().backward()
    p = (torch.tensor(P) * 0.875).requires_grad_()
    q = NestedQuantizer(p.detach(), Granularity("tensor"), threshold=LAM, init_scale=1e-3, eps=EPS, max_bits=4)
    with torch.no_grad():
        q.scale.fill_(0.01)  # below the bound, e.g. after an optimizer step
    y = q(p)
    (y * torch.tensor(G)).sum().backward()
    assert q.scale.item() == 0.125
    assert torch.equal(y, ref(p_ref.detach())) and torch.equal(p.grad, p_ref.grad)
    assert torch.equal(q.scale.grad, ref.scale.grad) and q.scale.grad.item() < 0


@pytest.mark.parametrize("max_bits", [2, 3, 8, 15, 16])
def test_codes_fit_max_bits_for_any_weights_and_scale(max_bits):
    gen = torch.Generator().manual_seed(max_bits)
    lo, hi = -(2 ** (max_bits - 1)), 2 ** (max_bits - 1) - 1
    for magnitude in (1e-30, 1e-6, 1.0, 3.0e5, 1e30):
        w = torch.randn(6, 33, generator=gen) * magnitude
        w[0, 0] = -w.abs().max()  # a negative extreme: floor reaches the extra negative code
        for gran in ("tensor", "axis:0", "axis:1"):
            q = NestedQuantizer(w, Granularity.parse(gran), init_scale=1e-30, min_scale=1e-38, max_bits=max_bits)
            codes = q.export_quantized(w).codes
            assert lo <= int(codes.min()) and int(codes.max()) <= hi, (magnitude, gran)
            assert q.bits(w) <= max_bits


def test_config_validation_and_bits_override():
    with pytest.raises(ConfigError, match="Nested.granularity"):
        Nested(granularity="group:4")
    with pytest.raises(ConfigError, match="Nested.threshold"):
        Nested(threshold=-1.0)
    with pytest.raises(ConfigError, match="Nested.min_scale"):
        Nested(min_scale=0.0)
    for bad in (1, 17, 8.0):
        with pytest.raises(ConfigError, match="Nested.max_bits"):
            Nested(max_bits=bad)
    assert Nested().max_bits == 16 and Nested(max_bits=8).build("w", torch.ones(2, 2), None).max_bits == 8
    with pytest.raises(ConfigError, match="Nested.gamma_bins"):
        Nested(gamma_bins=float("nan"))
    assert Nested().default_selection().biases is True
    assert Nested(biases=False).default_selection().biases is False
    assert Nested().build("fc.weight", torch.ones(2, 2), 8).method == "ste"
