"""Quantization mean-squared error of many clipping values α from one sort of the values (the MMSE search of
:func:`learnq.clipping.clip_lp` at p = 2, LAPQ seeds/001 §4.1 Eq. (12); METHODS.md §2 "MMSE").

Every grid with one clipping value scales with α (:func:`learnq.clipping.scale_offset`): step Δ = a·α and offset
o = b·α, so level j (code c_j, qmin..qmax of ``GridSpec.qrange``) is q_j = m_j·α with m_j = b + a·c_j, and the edge
between levels j - 1 and j is e_j = r_j·α with r_j = b + a·(c_j - ½) for round-to-nearest (b + a·c_j for ``floor``
rounding); values below the lowest edge go to q_min and above the highest to q_max (the clamp). With the values of a
group sorted once, P(e) = Σ_{x<e} x and C(e) = #{x < e} come from one ``searchsorted`` of the edges and a prefix
sum, and summation by parts over the cells gives the squared error exactly:

    Σ_x (Q_α(x) - x)² = Σx² - 2α·(m_max·Σx - a·Σ_j P(e_j)) + α²·(m_max²·n - Σ_j (m_j² - m_(j-1)²)·C(e_j))

so one candidate α costs O(levels · log n) instead of O(n) (at 8 bits, 255 edges against the 32,768 values of an
activation sample); α = 0 gives Σx² (everything to 0) as :func:`learnq.clipping.fake_quant_alpha`. The sums are
float64; the sorted values and the edges float32, as the direct evaluation's grid (:func:`learnq.clipping.lp_error`):
the two differ only by float rounding (a value within float32 rounding of an edge may fall in the other cell, where
its error is the same to that rounding; the large terms cancel to the error with a relative loss of about
12·(α/Δ)²·2⁻⁵³, 1e-10 at 8 bits).
"""

from __future__ import annotations

import numpy as np
import torch

from learnq.grid import GridSpec

_CHUNK = 1 << 22  # edges searched per block (groups x candidates x edges)


def levels(spec: GridSpec) -> int:
    """Number of levels (cells) of ``spec``'s grid."""
    qmin, qmax = spec.qrange()
    return qmax - qmin + 1


class SortedRows:
    """The values of each group of ``rows`` (n_groups, L) sorted once (float32, the entries ``mask`` leaves out last,
    as +inf), with the float64 prefix sums of x, the count n and the means of x and x² of the real entries."""

    def __init__(self, rows: torch.Tensor, mask: torch.Tensor) -> None:
        v = torch.where(mask, rows.float(), torch.inf)
        # numpy's sort is ~25x faster than torch's on one CPU thread (2.6 ms -> 0.1 ms for 32,768 floats, torch 2.13)
        self.sorted = torch.from_numpy(np.sort(v.numpy(), axis=1)) if v.device.type == "cpu" else v.sort(dim=1).values
        real = torch.where(torch.isfinite(self.sorted), self.sorted, 0.0).double()
        self.s1 = torch.nn.functional.pad(real.cumsum(dim=1), (1, 0))  # (n, L + 1): s1[:, i] = sum of i smallest
        self.count = mask.sum(dim=1, keepdim=True).to(torch.float64)  # (n, 1)
        self.mean1 = self.s1[:, -1:] / self.count
        self.mean2 = (real * real).sum(dim=1, keepdim=True) / self.count
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor, float, float]] = {}

    def _grid(self, spec: GridSpec, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(r_j float32, m_j² - m_(j-1)² float64, a, m_max) of ``spec``'s grid at α = 1, cached per grid."""
        key = (spec.bits, spec.scheme, spec.sign_grid, spec.restricted, spec.rounding, a, b)
        if key not in self._grids:
            qmin, qmax = spec.qrange()
            upper = torch.arange(qmin + 1, qmax + 1, dtype=torch.float64, device=self.sorted.device)
            ratio = b + a * (upper if spec.rounding == "floor" else upper - 0.5)
            m_hi, m_lo = b + a * upper, b + a * (upper - 1)
            self._grids[key] = (ratio.float(), m_hi * m_hi - m_lo * m_lo, a, b + a * qmax)
        return self._grids[key]

    def mse(self, alpha: torch.Tensor, spec: GridSpec, unit: tuple[float, float]) -> torch.Tensor:
        """mean((Q_α(x) - x)²) (float64, (n_groups, K)) for clipping values ``alpha`` (n_groups, K) >= 0 on
        ``spec``'s grid, whose step and offset at α = 1 are ``unit`` = (a, b) (:func:`learnq.clipping.scale_offset`)."""
        ratio, weight, a, m_top = self._grid(spec, *unit)
        n, k = alpha.shape
        step = max(1, _CHUNK // max(1, n * ratio.numel()))
        if k > step:
            return torch.cat([self.mse(alpha[:, i:i + step], spec, unit) for i in range(0, k, step)], dim=1)
        al = alpha.float()
        below = _count_below(self.sorted, (al.unsqueeze(2) * ratio).view(n, -1))  # C(e_j)
        sum_p = self.s1.gather(1, below).view(n, k, -1).sum(dim=2)  # Σ_j P(e_j)
        sum_wc = below.view(n, k, -1).double() @ weight  # Σ_j (m_j² - m_(j-1)²)·C(e_j)
        # the error formula divided by n: mean x² - 2α·(m_max·mean x - a·ΣP/n) + α²·(m_max² - ΣwC/n)
        ad = al.double()
        lin = sum_p * (2 * a) / self.count - 2 * m_top * self.mean1
        quad = m_top * m_top - sum_wc / self.count
        return (self.mean2 + ad * (lin + ad * quad)).clamp(min=0)


def _count_below(sorted_rows: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``#{x < e}`` per row for every edge: ``torch.searchsorted(..., side="left")``, on the CPU numpy's (the same
    integers; ~2x faster on one thread here, as its binary search starts from the previous edge's answer and each
    candidate's edges are increasing)."""
    if sorted_rows.device.type != "cpu":
        return torch.searchsorted(sorted_rows, edges, side="left")
    s, e = sorted_rows.numpy(), edges.contiguous().numpy()
    return torch.from_numpy(np.stack([np.searchsorted(s[i], e[i], side="left") for i in range(s.shape[0])])).long()


__all__ = ["SortedRows", "levels"]
