"""k-means on weight vectors: k-means++ seeding, Lloyd iterations, and DKM's soft assignment (chunked).

* k-means++ (Arthur & Vassilvitskii 2007): the first centroid uniformly at random, each next one drawn with
  probability proportional to the squared distance to the nearest centroid so far.
* Lloyd: hard assignment to the nearest centroid (:func:`learnq.palette.nearest`), each centroid the mean of its
  vectors (an empty cluster keeps its centroid); the objective ``Σ ‖w - c(w)‖²`` never increases.
* DKM (Cho et al. 2021, Eq. 1-3; METHODS.md §6-7): attention ``A_ij = softmax_j(-d(w_i, c_j)/τ)`` with ``d`` the
  Euclidean distance, centroid update ``c_j = Σ_i A_ij w_i / Σ_i A_ij`` (:func:`soft_update`) and the soft weights
  ``w̃_i = Σ_j A_ij c_j`` (:func:`soft_weights`).

Everything works on a ``(n, d)`` matrix of vectors with a palette group per vector (``groups``, int64 ``(n,)``) and
a ``(n_groups, k, d)`` float32 centroid tensor, and goes through the ``n × k`` attention in chunks of rows, so the
memory is ``O(chunk·k·d)`` whatever ``n`` is. When there is more than one chunk, the differentiable versions
recompute each chunk in the backward (``torch.utils.checkpoint``): autograd keeps the chunk's inputs, not its
``chunk × k`` attention.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from learnq.palette import CHUNK_ELEMENTS, nearest

INIT_SAMPLE = 1 << 20  # k-means++ seeds from at most this many vectors per group (uniform sample)
DIST_FLOOR = 1e-24  # squared distance under the square root (d > 1): sqrt(max(‖w-c‖², floor)) has a finite gradient


def chunk_rows(k: int, d: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a chunk's ``(rows, k, d)`` intermediate holds at most ``chunk_elements`` values."""
    return max(1, chunk_elements // (k * d))


def kmeans_pp(vectors: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds ``(k, d)`` float32 of ``vectors`` ``(n, d)``; with fewer distinct vectors than k the
    remaining seeds repeat chosen ones (a cluster that stays empty)."""
    x = vectors.float()
    n = x.shape[0]
    dev = x.device
    if n > INIT_SAMPLE:
        x = x[torch.randperm(n, generator=generator, device=generator.device).to(dev)[:INIT_SAMPLE]]
        n = INIT_SAMPLE
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    seeds = [x[first]]
    best = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:  # every vector is a seed already
            seeds.append(seeds[-1])
            continue
        pick = int(torch.multinomial((best / total).to(generator.device), 1, generator=generator))
        seeds.append(x[pick])
        best = torch.minimum(best, (x - x[pick]).pow(2).sum(1))
    return torch.stack(seeds)


def init_centroids(vectors: torch.Tensor, groups: torch.Tensor, n_groups: int, k: int, seed: int) -> torch.Tensor:
    """k-means++ seeds per palette group: ``(n_groups, k, d)`` float32, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    if n_groups == 1:
        return kmeans_pp(vectors, k, gen).unsqueeze(0)
    return torch.stack([kmeans_pp(vectors[groups == g], k, gen) for g in range(n_groups)])


def _sums(x: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, ...]:
    """Σ_i weights_ij x_i and Σ_i weights_ij per group: ``(G, k, d)`` and ``(G, k)``."""
    k = weights.shape[1]
    if n_groups == 1:
        return (weights.t() @ x).unsqueeze(0), weights.sum(0).unsqueeze(0)
    num = torch.zeros(n_groups, k, x.shape[1], dtype=x.dtype, device=x.device)
    den = torch.zeros(n_groups, k, dtype=x.dtype, device=x.device)
    return (num.index_add(0, groups, weights.unsqueeze(2) * x.unsqueeze(1)), den.index_add(0, groups, weights))


def lloyd(vectors: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, iters: int,
          tol: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """Up to ``iters`` Lloyd steps from ``centroids``; the centroids and the objective before each step and after the
    last (``Σ ‖w - c(w)‖²``, float64). Stops early when no centroid moves more than ``tol``."""
    x = vectors.float()
    c = centroids.float().clone()
    n_groups, k, _ = c.shape
    history = []
    step = chunk_rows(k, x.shape[1])
    for it in range(iters + 1):
        idx = nearest(x, c, groups)
        err = (x - c[groups, idx]).pow(2).sum()
        history.append(float(err.double()))
        if it == iters:
            break
        num = torch.zeros_like(c)
        den = torch.zeros(n_groups, k, dtype=x.dtype, device=x.device)
        for s in range(0, x.shape[0], step):
            sel = idx[s:s + step]
            one_hot = torch.nn.functional.one_hot(sel, k).to(x.dtype)
            a, b = _sums(x[s:s + step], one_hot, groups[s:s + step], n_groups)
            num, den = num + a, den + b
        new = torch.where(den.unsqueeze(2) > 0, num / den.clamp_min(1).unsqueeze(2), c)
        moved = float((new - c).abs().max())
        c = new
        if moved <= tol:
            idx = nearest(x, c, groups)
            history.append(float((x - c[groups, idx]).pow(2).sum().double()))
            break
    return c, history


# -- DKM ------------------------------------------------------------------------------------------------------------
def attention(x: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float) -> torch.Tensor:
    """DKM's ``A = softmax(-d(W, C)/τ)`` of one chunk: ``(rows, k)`` (Euclidean ``d``, per-row palette group)."""
    # computed as (k, rows) with the softmax over dim 0: a softmax over a short last dim is ~6x slower on CPU
    if x.shape[1] > 1 and centroids.shape[0] == 1:
        # one palette of vectors: ‖c‖² - 2·c·w + ‖w‖² as one matrix product (k, rows), ~3x faster than the
        # (k, rows, d) difference; float32 cancellation is ~1e-7·‖w‖², far below τ² at DKM's temperatures
        c = centroids[0]
        sq = torch.addmm(c.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1).unsqueeze(0), c, x.t(), alpha=-2.0)
        return torch.softmax(-sq.clamp_min(DIST_FLOOR).sqrt() / tau, dim=0).t()
    c = centroids[0].unsqueeze(1) if centroids.shape[0] == 1 else centroids[groups].transpose(0, 1)
    diff = c - x.unsqueeze(0)  # (k, rows, d)
    if x.shape[1] == 1:  # scalar palettes: |w - c| (abs has the gradient sign(w - c), 0 where w = c)
        dist = diff.squeeze(2).abs()
    else:
        dist = diff.pow(2).sum(-1).clamp_min(DIST_FLOOR).sqrt()
    return torch.softmax(-dist / tau, dim=0).t()


def _recompute(vectors: torch.Tensor, centroids: torch.Tensor, rows: int) -> bool:
    """Checkpoint the chunks (recompute them in the backward) when autograd records and there is more than one: a
    single chunk's attention is bounded by the chunk size already, and checkpointing costs time."""
    return torch.is_grad_enabled() and (vectors.requires_grad or centroids.requires_grad) and \
        vectors.shape[0] > rows


def _update_chunk(x: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float,
                  n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _sums(x, attention(x, centroids, groups, tau), groups, n_groups)


def soft_update(vectors: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float,
                rows: int) -> torch.Tensor:
    """One DKM centroid update ``C ← AᵀW / ΣA`` (per palette group), differentiable to ``vectors`` and
    ``centroids`` when they require grad; chunks of ``rows`` recomputed in the backward."""
    n_groups = centroids.shape[0]
    num = torch.zeros_like(centroids)
    den = torch.zeros(centroids.shape[:2], dtype=centroids.dtype, device=centroids.device)
    grad = _recompute(vectors, centroids, rows)
    for s in range(0, vectors.shape[0], rows):
        args = (vectors[s:s + rows], centroids, groups[s:s + rows], tau, n_groups)
        a, b = checkpoint(_update_chunk, *args, use_reentrant=False) if grad else _update_chunk(*args)
        num, den = num + a, den + b
    return num / den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(2)


def _weights_chunk(x: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float) -> torch.Tensor:
    a = attention(x, centroids, groups, tau)
    if centroids.shape[0] == 1:
        return a @ centroids[0]
    return (a.unsqueeze(2) * centroids[groups]).sum(1)


def soft_weights(vectors: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float,
                 rows: int) -> torch.Tensor:
    """DKM's soft weights ``W̃ = A·C`` ``(n, d)``, chunked (recomputed in the backward)."""
    grad = _recompute(vectors, centroids, rows)
    parts = []
    for s in range(0, vectors.shape[0], rows):
        args = (vectors[s:s + rows], centroids, groups[s:s + rows], tau)
        parts.append(checkpoint(_weights_chunk, *args, use_reentrant=False) if grad else _weights_chunk(*args))
    return torch.cat(parts)


__all__ = ["attention", "chunk_rows", "init_centroids", "kmeans_pp", "lloyd", "soft_update", "soft_weights"]
