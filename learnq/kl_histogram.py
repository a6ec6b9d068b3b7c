"""TensorRT's KL-divergence calibration on histograms (Migacz 2017, "8-bit inference with TensorRT", the entropy
calibration; used by :func:`learnq.clipping.clip_kl`): for each candidate count ``i`` of kept bins, KL(P_i‖Q_i)
between the kept histogram (outliers folded into its last bin) and its quantization onto ``levels`` runs, after the
reference code's ε-smoothing. Computed for many histograms at once on their nonzero bins only (the zero bins add
exact 0 terms after the smoothing): the same divergences as the per-histogram dense procedure up to summation order.
"""

from __future__ import annotations

import math

import torch

_KL_BLOCK = 1 << 20  # elements (groups x candidates x kept columns) per block of the KL search


def _kl_block(pos: torch.Tensor, vals: torch.Tensor, hist: torch.Tensor, tail: torch.Tensor, i: torch.Tensor,
              levels: int, eps: float = 1e-4) -> torch.Tensor:
    """KL(P_i‖Q_i) of groups (G) x candidates ``i`` (K), computed on the nonzero bins of each histogram only.

    ``pos``/``vals`` (G, M): positions and counts of the nonzero bins (padding: position = number of bins, count 0);
    ``hist`` (G, bins), ``tail`` (G, bins + 1) = sum of ``hist[i:]``. The dense procedure's smoothing gives a bin
    where P_i is zero ε in P and ε in Q (Q is zero wherever P is), a term ε·log(ε/ε) = 0: only P's nonzero bins (the
    nonzero bins before i - 1, and the last kept bin i - 1 holding the folded tail) contribute, with the dense
    procedure's counts of zero entries (i - nonzero ones) in the smoothing.
    """
    g, k = pos.shape[0], i.numel()
    last = (i - 1).expand(g, k)
    before = pos.unsqueeze(1) < last.unsqueeze(2)  # (G, K, M): kept bins before the last one
    sliced = torch.cat([vals.unsqueeze(1) * before, hist.gather(1, last).unsqueeze(2)], dim=2)  # (G, K, M + 1)
    p = sliced.clone()
    p[:, :, -1] += tail.gather(1, i.expand(g, k))
    cols = torch.cat([pos.unsqueeze(1).expand(g, k, -1), last.unsqueeze(2)], dim=2)
    kept = torch.cat([before, torch.ones_like(before[:, :, :1])], dim=2)
    nz = p != 0
    merged = (i // levels).clamp(min=1).reshape(1, k, 1)
    run = torch.minimum(cols // merged, torch.tensor(levels - 1))
    run = torch.where(kept, run, run[:, :, -1:])  # nondecreasing along the columns (positions are sorted)
    seg = torch.cat([torch.zeros_like(run[:, :, :1]), (run[:, :, 1:] != run[:, :, :-1]).cumsum(2)], dim=2)
    mass = torch.zeros(p.shape, dtype=torch.float64).scatter_add_(2, seg, sliced)  # per run, numbered densely
    count = torch.zeros(p.shape, dtype=torch.float64).scatter_add_(2, seg, nz.double())
    q = (mass / count.clamp(min=1)).gather(2, seg) * nz
    width = i.reshape(1, k).double()

    def smooth(x: torch.Tensor) -> torch.Tensor:  # the dense _smooth on x's nonzero entries, the rest stays 0
        nonzero = (x != 0) & kept
        n_nonzero = nonzero.sum(dim=2).double()
        shift = eps * (width - n_nonzero) / n_nonzero.clamp(min=1)
        return torch.where(nonzero, x - shift.unsqueeze(2), 0.0)

    p = smooth(p / p.sum(dim=2, keepdim=True))
    q_sum = q.sum(dim=2, keepdim=True)
    q_zero = (q == 0) & nz  # P nonzero, Q zero (the last bin holding only the tail): Q smoothed to ε there
    q = torch.where(q_zero, eps, smooth(q / torch.where(q_sum > 0, q_sum, 1.0)))
    terms = torch.where(nz & (p > 0), p * torch.log(p / q), 0.0)
    kl = terms.sum(dim=2)
    return torch.where((q_sum.squeeze(2) > 0) & ~kl.isnan(), kl, math.inf)


def kl_divergences_rows(hists: torch.Tensor, levels: int, start: int | None = None) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """:func:`kl_divergences` of every row of ``hists`` (G, bins): ``(candidates i, divergences (G, K))``, blocks of
    groups and candidates sized by the groups' numbers of nonzero bins."""
    hists = hists.double().cpu()
    n_groups, nbins = hists.shape
    first = levels if start is None else start
    cands = torch.arange(max(first, 1), nbins + 1, dtype=torch.int64)
    tail = torch.cat([hists.flip(1).cumsum(1).flip(1), hists.new_zeros(n_groups, 1)], dim=1)
    nonzero = hists != 0
    width = max(1, int(nonzero.sum(dim=1).max()))
    order = torch.sort((~nonzero).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # nonzero bins first
    vals = hists.gather(1, order)
    pos = torch.where(vals != 0, order, nbins)
    out = torch.empty(n_groups, len(cands), dtype=torch.float64)
    g_step = max(1, min(n_groups, _KL_BLOCK // ((width + 1) * len(cands))))
    k_step = max(1, _KL_BLOCK // (g_step * (width + 1)))
    for g0 in range(0, n_groups, g_step):
        rows = slice(g0, g0 + g_step)
        for k0 in range(0, len(cands), k_step):
            block = cands[k0:k0 + k_step]
            out[rows, k0:k0 + len(block)] = _kl_block(pos[rows], vals[rows], hists[rows], tail[rows], block, levels)
    return cands, out


def kl_divergences(hist: torch.Tensor, levels: int, start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P_i‖Q_i) for every candidate count of kept bins i in [start, len(hist)] (TensorRT's procedure).

    Returns ``(candidates i, divergences)`` (float64). P_i is ``hist[:i]`` with the mass of ``hist[i:]`` added to its
    last bin; Q_i splits ``hist[:i]`` (without that mass) into ``levels`` runs of ``i // levels`` bins (the last run
    takes the rest), spreads each run's mass evenly over the bins where P_i is nonzero and is zero where P_i is.
    Both are normalised and ε-smoothed over their i bins (zero entries get ε = 1e-4, the nonzero ones give that mass
    back evenly: the reference code); a divergence that is not a number (smoothing made an entry negative) counts
    as +inf. Computed on the nonzero bins only (:func:`_kl_block`), the same sums as the dense procedure up to their
    order.
    """
    cands, kl = kl_divergences_rows(hist.reshape(1, -1), levels, start)
    return cands, kl[0]


__all__ = ["kl_divergences", "kl_divergences_rows"]
