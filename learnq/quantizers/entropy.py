"""A differentiable estimate of the entropy-coded size of quantization codes: the size term document 003 leaves as
future work (DiffQ, Défossez, Adi, Synnaeve, TMLR 2022; seeds/003 §5.6: "replace the model size equation 8 to account
for the actual entropy of the data, for instance with differentiable kernel density estimation"; METHODS.md §8).

**What is estimated.** A quantizer maps each weight to a real *level coordinate* ``u_i`` (``w/Δ`` on its grid: DiffQ
``(w - min)/Δ_s``, LSQ ``clamp(w/s)``, STE ``(w - offset)/scale``) and stores the code ``round(u_i)``. An entropy coder
with one histogram per tensor (what :func:`learnq.accounting.entropy_bits` reports as the entropy bound) needs about
``n·H`` bits, ``H = -Σ_k p_k log2 p_k``, ``p_k = #{i : round(u_i) = k}/n``.

**The estimate (a kernel density estimate at the integer levels).**

    p̃_k = (1/n) Σ_i κ(u_i - k),     κ(t) = Φ((t + ½)/σ) - Φ((t - ½)/σ),     size = n·H(p̃) bits

``κ`` is the rounding bin ``[k - ½, k + ½)`` convolved with a Gaussian kernel of bandwidth ``σ`` levels
(:data:`BANDWIDTH` = 0.5): ``Σ_k κ(u - k) = 1`` for every ``u`` (the terms telescope), so ``p̃`` is a distribution,
and ``σ → 0`` gives the hard histogram. ``∂κ/∂u = (φ((t - ½)/σ) - φ((t + ½)/σ))/σ``: every weight within a few ``σ`` of
a bin edge gets a gradient, which is what the hard count lacks. The bias is that of a KDE: the estimate is the entropy
of the codes of a density widened by ``σ²`` (variance in levels), ``H̃ - H ≈ ½·log2(1 + σ²/s²)`` bits for a smooth
density of standard deviation ``s`` levels (0.02 bit at ``s = 3``, 0.5 bit at ``s = 0.6``): small when many levels
are used, larger when a tensor uses two or three codes (tests/test_entropy_size.py states the tolerances).

**Per tensor.** One histogram per tensor over the integer code values (a histogram per group of 8 weights would cost
more to store than it saves); DiffQ, whose groups have their own widths, uses one per tensor and width class
(:func:`learnq.quantizers.diffq.width_class_entropy_bits`, the reasons there). :func:`soft_code_bits` gives each
value's code length ``-Σ_k κ(u_i - k)·log2 p̃_k``; their sum is ``n·H(p̃)``. Only the ``2R + 1`` levels nearest
``round(u)`` (``R = ceil(½ + 5σ)``) are evaluated per weight: the mass left out is below ``Φ(-5) ≈ 3·10⁻⁷`` per
weight and the histogram is renormalised. Memory and time ``O(n·(2R + 1))``.

**The penalty.** ``weight · Σ_tensors n·H̃ / 2^23`` (MB, the unit of DiffQ's Eq. 8 and its λ), for DiffQ
(``DiffQ(size="entropy")``) and as ``entropy_weight`` on LSQ, STE and DKM (whose estimate is the palette usage
``p̃_k = mean_i A_ik`` of DKM's soft assignments, :func:`usage_entropy_bits`). A parameter not used in the model's
latest forward, or frozen, contributes a detached term (no gradient), as DiffQ's Eq. 8 term does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only
    from learnq.quantizers.base import WeightQuantizer

BANDWIDTH = 0.5  # σ of the Gaussian kernel, in levels (METHODS.md §8: "a kernel of width ~1 level")
MB_BITS = 2**23  # 1 MB = 8·2^20 bits (seeds/003, Eq. 8)
_TAIL = 5.0  # levels evaluated per weight: |k - round(u)| <= ceil(½ + _TAIL·σ)


def _soft_assign(u: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mass, index, hist)``: ``κ(u_i - k)`` for the ``2R + 1`` levels ``k`` nearest ``round(u_i)`` (``(n, 2R+1)``),
    their bins in ``hist`` and the normalised soft histogram ``p̃`` (levels ``min(round(u)) - R ..``)."""
    flat = u.reshape(-1)
    reach = math.ceil(0.5 + _TAIL * bandwidth)
    centre = torch.round(flat.detach())
    offsets = torch.arange(-reach, reach + 2, dtype=flat.dtype, device=flat.device) - 0.5  # 2R + 2 bin edges
    edges = (centre - flat).unsqueeze(1) + offsets  # (n, 2R + 2): k ± ½ - u for the 2R + 1 levels k near u
    cdf = torch.special.ndtr(edges / bandwidth)
    mass = cdf[:, 1:] - cdf[:, :-1]  # κ(u - k), (n, 2R + 1)
    index = (centre - centre.min()).long().unsqueeze(1) + torch.arange(2 * reach + 1, device=flat.device)
    size = int(index[:, -1].max()) + 1
    hist = torch.zeros(size, dtype=flat.dtype, device=flat.device).index_add(0, index.reshape(-1), mass.reshape(-1))
    return mass, index, hist / hist.sum()


def soft_histogram(u: torch.Tensor, bandwidth: float = BANDWIDTH) -> torch.Tensor:
    """``p̃`` of the module docstring over the levels ``min(round(u)) - R .. max(round(u)) + R`` (1-D, sums to 1),
    differentiable in ``u`` (any float dtype; float64 for finite-difference checks)."""
    if u.numel() == 0:
        return u.new_ones(1)
    return _soft_assign(u, bandwidth)[2]


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    """``-Σ p log2 p`` in bits (0·log 0 = 0, with a finite gradient at empty bins)."""
    return -(p * torch.log2(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()


def soft_code_bits(u: torch.Tensor, bandwidth: float = BANDWIDTH) -> torch.Tensor:
    """Per value, the estimated code length ``-Σ_k κ(u_i - k)·log2 p̃_k`` in bits under the soft histogram of all of
    ``u`` (shape of ``u`` flattened); their sum is :func:`soft_entropy_bits`."""
    if u.numel() == 0:
        return u.reshape(-1)
    mass, index, p = _soft_assign(u, bandwidth)
    return -(mass * torch.log2(p.clamp_min(torch.finfo(p.dtype).tiny))[index]).sum(1)


def soft_entropy_bits(u: torch.Tensor, bandwidth: float = BANDWIDTH) -> torch.Tensor:
    """``n·H(p̃)``: the estimated entropy-coded size in bits of the codes ``round(u)`` (a 0-d tensor)."""
    return entropy_of(soft_histogram(u, bandwidth)) * u.numel()


def usage_entropy_bits(assignments: torch.Tensor) -> torch.Tensor:
    """``n·H(p̃)`` with ``p̃_k = (1/n) Σ_i A_ik`` from soft assignments ``A`` ``(n, k)`` whose rows sum to 1 (DKM)."""
    usage = assignments.sum(0)
    return entropy_of(usage / usage.sum()) * assignments.shape[0]


def entropy_penalty(quantizers: Sequence[WeightQuantizer], weight: float) -> torch.Tensor | None:
    """``weight · Σ n·H̃ / 2^23`` over quantizers that implement ``soft_entropy_bits(x)``; None when ``weight`` is 0
    (the method's loss is then unchanged). Unused or frozen parameters contribute detached terms."""
    if not weight or not quantizers:
        return None
    total = torch.zeros((), device=quantizers[0]._device())
    for q in quantizers:
        live = q.used_in_last_forward() and not q.source_frozen()
        with torch.set_grad_enabled(live and torch.is_grad_enabled()):
            total = total + q.soft_entropy_bits(q.current_input()).float()  # type: ignore[attr-defined]
    return weight * total / MB_BITS


__all__ = ["BANDWIDTH", "MB_BITS", "entropy_of", "entropy_penalty", "soft_code_bits", "soft_entropy_bits",
           "soft_histogram",
           "usage_entropy_bits"]
