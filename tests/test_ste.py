"""Straight-through estimators: forward values and gradients."""

from __future__ import annotations

import torch

from learnq.ste import floor_ste, grad_scale, round_ste, ste


def test_round_and_floor_forward_backward():
    x = torch.tensor([-1.6, -0.5, 0.4, 1.5, 2.7], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [-2.0, -0.0, 0.0, 2.0, 3.0]
    (y * torch.arange(5.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    x.grad = None
    z = floor_ste(x)
    assert z.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    z.sum().backward()
    assert x.grad.tolist() == [1.0] * 5


def test_grad_scale_matches_finite_difference_of_scaled_identity():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x)
    (y**2).sum().backward()
    # d/dx sum(x^2) = 2x, scaled by 0.25
    assert torch.allclose(x.grad, 0.5 * x.detach())


def test_ste_identity_gradient():
    x = torch.randn(4, requires_grad=True)
    y = ste(x, torch.round(x * 3) / 3)
    assert torch.allclose(y, torch.round(x.detach() * 3) / 3)
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4
