"""The thesis's custom loss terms (learnq.quantizers.losses, Sec. 3.2): values by hand, weighting by parameter count,
and where their gradients go."""

from __future__ import annotations

import pytest
import torch

from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers import NestedQuantizer
from learnq.quantizers.losses import bin_count_loss, deviation_loss, inverse_scale_loss, nested_loss

# A: a 2x2 weight with row scales [0.125, 0.25]; P/s = [[4.4, -2.4], [4.0, -2.8]]
PA = [[0.55, -0.3], [1.0, -0.7]]
# B: a bias with one scale 0.1; P/s = [3.3, -1.2, 0.5]
PB = [0.33, -0.12, 0.05]


def _items() -> list[tuple[NestedQuantizer, torch.Tensor]]:
    pa = torch.tensor(PA, requires_grad=True)
    pb = torch.tensor(PB, requires_grad=True)
    qa = NestedQuantizer(pa.detach(), Granularity.parse("row"), init_scale=1.0)
    qb = NestedQuantizer(pb.detach(), Granularity.parse("row"), init_scale=1.0)
    with torch.no_grad():
        qa.scale.copy_(torch.tensor([0.125, 0.25]))
        qb.scale.fill_(0.1)
    return [(qa, pa), (qb, pb)]


def test_inverse_scale_penalty_weighted_by_parameter_count():
    items = _items()
    loss = inverse_scale_loss(items)
    assert loss.item() == pytest.approx((4 * (8 + 4) / 2 + 3 * 10) / 7, rel=1e-6)
    loss.backward()
    qa, qb = items[0][0], items[1][0]
    # d/ds mean(1/s) = -1/(n_s·s²), times the weight 4/7 (A) or 3/7 (B)
    assert qa.scale.grad.tolist() == pytest.approx([-64 / 2 * 4 / 7, -16 / 2 * 4 / 7], rel=1e-5)
    assert qb.scale.grad.item() == pytest.approx(-100 * 3 / 7, rel=1e-5)


def test_bin_count_constraint():
    items = _items()
    loss = bin_count_loss(items)
    # A: rows need max(4.4, 2.4) = 4.4 and max(4, 2.8) = 4 bins: mean 4.2; B: 3.3
    assert loss.item() == pytest.approx((4 * 4.2 + 3 * 3.3) / 7, rel=1e-6)
    loss.backward()
    pa = items[0][1]
    # only the largest |P| of each row gets a gradient: d(|P|/s)/dP / 2 rows · 4/7
    assert pa.grad.flatten().tolist() == pytest.approx([8 / 2 * 4 / 7, 0.0, 4 / 2 * 4 / 7, 0.0], rel=1e-5)
    assert (items[0][0].scale.grad < 0).all()  # more bins are penalised by growing s


def test_deviation_is_the_floor_quantization_error_and_trains_only_the_scale():
    items = _items()
    loss = deviation_loss(items)
    dev_a = (0.55 - 0.5 + (-0.3 + 0.375) + (1.0 - 1.0) + (-0.7 + 0.75)) / 4
    dev_b = ((0.33 - 0.3) + (-0.12 + 0.2) + 0.05) / 3
    assert loss.item() == pytest.approx((4 * dev_a + 3 * dev_b) / 7, rel=1e-5)
    loss.backward()
    qa, pa = items[0]
    # gradient to s: mean of frac(P/s) over the elements (the row's share of the mean over 4), times 4/7
    assert qa.scale.grad.tolist() == pytest.approx([(0.4 + 0.6) / 4 * 4 / 7, (0.0 + 0.2) / 4 * 4 / 7], abs=1e-5)
    assert pa.grad is None


def test_nested_loss_combines_the_terms():
    items = _items()
    total = nested_loss(items, gamma_inverse=0.5, gamma_bins=2.0, gamma_deviation=3.0)
    parts = 0.5 * inverse_scale_loss(items) + 2.0 * bin_count_loss(items) + 3.0 * deviation_loss(items)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)
    assert nested_loss(items).item() == 0.0
    with pytest.raises(ConfigError):
        nested_loss([])
