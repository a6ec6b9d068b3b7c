"""DiffQ Fig. 1a (seeds/003 §3.3 and Eq. 5-7): the 1-D least-squares problem ``min_w E[½(X·Q(w,B) - X·w*)²]`` with
``w* = 0.11``, ``B = 4`` on [0, 1] and SGD with step 0.5, started at ``w0 = w*``.

With STE (learnq.quantizers.ste.fake_quantize_ste) the quantized weight Q(w_n) oscillates between the two grid levels
around w* (w- = 1/15, w+ = 2/15) and w_n hovers at their midpoint; with pseudo-quantization noise
(learnq.quantizers.diffq.pseudo_quantize, Eq. 6) the expected gradient is σ²(w - w*) (Eq. 7), so w_n converges to w*
and Q(w_n) = Q(w*) = w+. The expectation over X ~ N(0, 1) (σ² = 1) and the noise is estimated with 256 samples per
step; the paper's figure uses X = 1 almost surely, also checked for STE.
"""

from __future__ import annotations

import torch

from learnq.quantizers.diffq import pseudo_quantize
from learnq.quantizers.ste import fake_quantize_ste

W_STAR, BITS, STEP, ITERS = 0.11, 4, 0.5, 300
W_MINUS, W_PLUS = 1 / 15, 2 / 15


def q(w: float) -> float:
    return round(w * 15) / 15


def run(method: str, x: torch.Tensor, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    w = torch.tensor(W_STAR, requires_grad=True)
    path = []
    for _ in range(ITERS):
        wb = w.expand(x.shape)
        qw = fake_quantize_ste(wb, BITS, 0.0, 1.0) if method == "ste" else pseudo_quantize(wb, BITS, 0.0, 1.0)
        loss = (0.5 * (x * qw - x * W_STAR) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= STEP * grad
        path.append(float(w.detach()))
    return path[-100:]


def test_ste_oscillates_between_the_two_levels_around_w_star():
    assert q(W_STAR) == W_PLUS
    for x in (torch.ones(1), torch.randn(256, generator=torch.Generator().manual_seed(1))):
        tail = run("ste", x)
        levels = [q(w) for w in tail]
        assert set(levels) == {W_MINUS, W_PLUS}
        assert min(levels.count(W_MINUS), levels.count(W_PLUS)) >= 20  # both levels, again and again
        error = sum(abs(v - W_STAR) for v in levels) / len(levels)
        assert error > abs(W_PLUS - W_STAR) + 0.005  # worse on average than the optimum Q(w*) = w+
        mid = (W_MINUS + W_PLUS) / 2
        assert all(abs(w - mid) < 0.03 for w in tail)  # w_n circles the boundary between the levels


def test_pseudo_noise_converges_to_w_star():
    x = torch.randn(256, generator=torch.Generator().manual_seed(1))
    tail = run("noise", x)
    assert abs(sum(tail) / len(tail) - W_STAR) < 2e-3
    assert all(abs(w - W_STAR) < 0.008 for w in tail)
    assert all(q(w) == q(W_STAR) for w in tail)  # the quantized weight is the optimum, every time
