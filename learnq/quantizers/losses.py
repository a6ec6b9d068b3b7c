"""The thesis's custom loss terms for learned quantization scales (seeds/004, Sec. 3.2.1-3.2.3; METHODS.md section 5).

The document gives only the titles; METHODS.md fixes the formulas. For one quantized parameter P with scale s (one
per granularity group) and ``P_r = floor(P/s)·s``:

* inverse-scale penalty (3.2.1):   ``mean(1/s)``                    — pushes s up (coarser grid);
* bin-count constraint (3.2.2):    ``mean over groups of max|P|/s`` — the number of bins a group needs; pushes s up
  and the largest |P| of each group down;
* deviation (3.2.3):               ``mean(|P - P_r|)``              — the quantization error; pushes s down.

Each is averaged over the quantized parameters weighted by their number of elements, and the handle adds
``γ_inverse·L_inverse + γ_bins·L_bins + γ_deviation·L_deviation`` to the task loss.

Gradient of the deviation: its value is ``mean(s·frac(P/s))`` (floor rounding: ``0 <= P - P_r < s``). It is
differentiated with the fractional part held fixed, so it gives s the gradient ``mean(frac(P/s))`` (the error grows
with the step) and gives P none: the local slope of the saw-tooth in s (``-floor(P/s)``) would reward a larger s
inside every bin, and its slope in P (+1 everywhere, since P - P_r >= 0) would push every weight down by the same
amount. The reference code computes ``|P - P/s|``, which is not a quantization error at all (METHODS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from learnq.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the nested module imports this one
    from learnq.quantizers.nested import NestedQuantizer

Item = tuple["NestedQuantizer", torch.Tensor]  # a quantizer and the tensor P it quantizes (with its gradient)


def _weighted(values: list[torch.Tensor], weights: list[int]) -> torch.Tensor:
    total = sum(weights)
    return sum(v * (w / total) for v, w in zip(values, weights, strict=True))  # type: ignore[return-value]


def _check(items: Sequence[Item]) -> None:
    if not items:
        raise ConfigError("the nested losses need at least one nested-quantized parameter")


def inverse_scale_term(q: NestedQuantizer) -> torch.Tensor:
    """``mean(1/s)`` of one parameter."""
    return (1.0 / q.effective_scale()).mean()


def bin_count_term(q: NestedQuantizer, p: torch.Tensor) -> torch.Tensor:
    """``mean over groups of max|P|/s`` of one parameter."""
    s = q.granularity.expand(q.effective_scale(), p.shape)
    return q.granularity.view(p.float().abs() / s).amax(dim=1).mean()


def deviation_term(q: NestedQuantizer, p: torch.Tensor) -> torch.Tensor:
    """``mean(|P - floor(P/s)·s|)`` of one parameter, differentiated as ``s·frac(P/s)`` with frac fixed."""
    s = q.granularity.expand(q.effective_scale(), p.shape)
    with torch.no_grad():
        ratio = p.detach().float() / s.detach()
        frac = ratio - torch.floor(ratio)
    return (s * frac).mean()


def inverse_scale_loss(items: Sequence[Item]) -> torch.Tensor:
    _check(items)
    return _weighted([inverse_scale_term(q) for q, _ in items], [q.numel for q, _ in items])


def bin_count_loss(items: Sequence[Item]) -> torch.Tensor:
    _check(items)
    return _weighted([bin_count_term(q, p) for q, p in items], [q.numel for q, _ in items])


def deviation_loss(items: Sequence[Item]) -> torch.Tensor:
    _check(items)
    return _weighted([deviation_term(q, p) for q, p in items], [q.numel for q, _ in items])


def nested_loss(items: Sequence[Item], gamma_inverse: float = 0.0, gamma_bins: float = 0.0,
                gamma_deviation: float = 0.0) -> torch.Tensor:
    """``γ_inverse·L_inverse + γ_bins·L_bins + γ_deviation·L_deviation`` (terms with γ = 0 are not computed)."""
    _check(items)
    device = items[0][0].scale.device
    total = torch.zeros((), device=device)
    if gamma_inverse:
        total = total + gamma_inverse * inverse_scale_loss(items)
    if gamma_bins:
        total = total + gamma_bins * bin_count_loss(items)
    if gamma_deviation:
        total = total + gamma_deviation * deviation_loss(items)
    return total


__all__ = ["inverse_scale_loss", "bin_count_loss", "deviation_loss", "nested_loss", "inverse_scale_term",
           "bin_count_term", "deviation_term"]
