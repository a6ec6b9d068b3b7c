"""DKM: differentiable k-means weight clustering (Cho, Alizadeh-Vahid, Adya, Rastegari, "DKM: Differentiable k-Means
Clustering Layer for Neural Network Compression", ICLR 2022, Sec. 3, Eq. 1-3, Algorithm 1; METHODS.md §6-7; used by
seeds/000 §4.4, Fig. 3, Table 6 with 1/2/4-bit scalar and 2-bit/2-dim, 4-bit/4-dim vector palettes).

The weight is split into ``dim``-long vectors (:mod:`learnq.palette`: consecutive values, as the multi-dimensional
DSMM loss reads them) clustered around ``k = 2^bits`` centroids ``C`` (one palette per tensor, or per group of the
granularity: ``channel``, ``group:G``). Per training forward (Algorithm 1):

1. ``iters`` centroid updates, warm-started from the centroids of the previous forward (k-means++ at the start):
   ``A = softmax(-d(W, C)/τ)`` (``d`` Euclidean), ``C ← AᵀW / ΣA``; these run without autograd (no graph);
2. one more update, differentiable: ``C* = AᵀW / ΣA`` with ``A`` from the centroids of step 1;
3. the forward uses ``W̃ = A(W, C*)·C*``, differentiable to ``W`` through both the attention and ``C*``; ``C*`` is
   kept as the centroids (the palette of eval and export, the start of the next forward).

The paper back-propagates through every iteration (its memory is ``O(iters·n·k)``, the known limit of DKM); here the
gradient flows through the last update only, and every ``n × k`` attention is computed in chunks of rows,
recomputed in the backward, so the memory is ``O(n·d + chunk·k·d)`` (a 4M-weight layer at 4 bits: see
docs/clustering.md for the measured peak). ``τ`` is given relative to the weight's standard deviation at
preparation (``tau_abs = tau · std(W)``), so one value fits layers of any scale.

Eval and export snap every vector to its nearest centroid (hard assignment; squared Euclidean distance, ties to the
lowest index) in the palette as stored (``palette_dtype``: float32, or float16 to halve the LUT): the file holds the
palette plus ``bits`` bits per vector (:class:`learnq.grid.QuantizedTensor` with ``palette``; the file side is
:class:`learnq.quantizers.palettized.PaletteQuantizer`, shared with iPQ).

``entropy_weight`` (issue 18, default 0: no extra loss): adds ``entropy_weight·Ĥ`` to the loss, ``Ĥ`` the entropy of
the palette usage ``p̃_k = mean_i A_ik`` of the soft assignments to the current centroids (indices pooled over the
palette groups, as the file's entropy bound counts them) times the number of vectors, in MB
(:func:`learnq.quantizers.entropy.usage_entropy_bits`; seeds/003 §5.6); its gradient goes to the weights through
``A`` (the centroids are a buffer); chunks of rows are recomputed in the backward like the forward's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from learnq.checks import check_choice, check_float, check_int
from learnq.clustering import attention, chunk_rows, init_centroids, soft_update, soft_weights
from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.palette import CHUNK_ELEMENTS, PALETTE_DTYPES, check_vectors, nearest, vector_groups
from learnq.quantizers.base import WeightQuantizer, per_tensor
from learnq.quantizers.config import QATConfig, parse_granularity
from learnq.quantizers.entropy import entropy_of, entropy_penalty
from learnq.quantizers.palettized import PaletteQuantizer


class DKMQuantizer(PaletteQuantizer):
    """One tensor's DKM clustering: centroids ``(n_groups, 2^bits, dim)`` (a buffer, updated by every training
    forward), the attention temperature ``tau_abs`` (fixed at preparation)."""

    method = "dkm"

    def __init__(self, x: torch.Tensor, bits: int, dim: int, granularity: Granularity, tau: float, iters: int,
                 palette_dtype: str = "float32", chunk_elements: int = CHUNK_ELEMENTS, seed: int = 0) -> None:
        shape = tuple(x.shape)
        super().__init__(shape, per_tensor(granularity, shape))
        check_vectors(shape, self.granularity, dim, "DKM weight")
        self.bits, self.dim, self.k = bits, dim, 2**bits
        self.iters, self.palette_dtype = iters, PALETTE_DTYPES[palette_dtype]
        self.rows = chunk_rows(self.k, dim, chunk_elements)
        n_groups = self.granularity.num_groups(shape)
        vectors = x.detach().float().reshape(-1, dim)
        self.register_buffer("groups", vector_groups(shape, self.granularity, dim, x.device), persistent=False)
        self.register_buffer("centroids", init_centroids(vectors, self.groups, n_groups, self.k, seed).to(x.device))
        std = float(x.detach().float().std()) if x.numel() > 1 else 0.0
        self.tau_abs = tau * (std if std > 0 else 1.0)

    # -- training ----------------------------------------------------------------------------------------------
    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        vectors = x.float().reshape(-1, self.dim)
        with torch.no_grad():
            c = self.centroids
            for _ in range(self.iters):
                c = soft_update(vectors.detach(), c, self.groups, self.tau_abs, self.rows)
        c_star = soft_update(vectors, c, self.groups, self.tau_abs, self.rows)
        with torch.no_grad():
            if not bool(torch.isfinite(c_star).all()):
                raise self.diverged("has NaN or Inf centroids")
            self.centroids.copy_(c_star)  # the palette of eval/export: the centroids this forward used
        return soft_weights(vectors, c_star, self.groups, self.tau_abs, self.rows).reshape(x.shape).to(x.dtype)

    def soft_entropy_bits(self, x: torch.Tensor) -> torch.Tensor:
        """``n·H(mean_i A_i)``: the palette usage entropy of the soft assignments of ``x``'s vectors, in bits."""
        vectors = x.float().reshape(-1, self.dim)
        usage = torch.zeros(self.k, device=vectors.device)
        grad = torch.is_grad_enabled() and vectors.requires_grad and vectors.shape[0] > self.rows
        for s in range(0, vectors.shape[0], self.rows):
            args = (vectors[s:s + self.rows], self.centroids, self.groups[s:s + self.rows], self.tau_abs)
            usage = usage + (checkpoint(_usage_chunk, *args, use_reentrant=False) if grad else _usage_chunk(*args))
        return entropy_of(usage / usage.sum()) * vectors.shape[0]

    # -- hard assignment (eval, export: the file side is PaletteQuantizer's) ------------------------------------
    def codebook_value(self) -> torch.Tensor:
        return self.centroids

    def indices(self, x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        """Each vector's nearest centroid of the stored palette (squared Euclidean, ties to the lowest index)."""
        return nearest(x.detach().float().reshape(-1, self.dim), palette, self.groups)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dim": self.dim, "tau_abs": self.tau_abs}

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, dim={self.dim}, granularity={self.granularity}, tau_abs={self.tau_abs:.3g}, "
                f"iters={self.iters}")


def _usage_chunk(x: torch.Tensor, centroids: torch.Tensor, groups: torch.Tensor, tau: float) -> torch.Tensor:
    return attention(x, centroids, groups, tau).sum(0)


@dataclass(frozen=True)
class DKM(QATConfig):
    """DKM (Cho et al. 2021): ``2^bits`` centroids of ``dim``-long weight vectors per tensor (``granularity``
    ``"tensor"``) or per group (``"channel"``, ``"group:G"``); ``tau`` relative to the weight's std; ``iters``
    centroid updates per forward; ``palette_dtype`` of the stored LUT; ``seed`` of the k-means++ seeding;
    ``entropy_weight``: weight of the palette-usage entropy (MB) in the loss (0: none)."""

    method = "dkm"
    description = "DKM: differentiable k-means palettization, soft attention to 2^bits centroids (Cho et al. 2021)"
    bits: int = 2
    dim: int = 1
    granularity: str = "tensor"
    tau: float = 0.05
    iters: int = 3
    palette_dtype: str = "float32"
    chunk_elements: int = CHUNK_ELEMENTS
    seed: int = 0
    entropy_weight: float = 0.0

    def validate(self) -> None:
        check_int("DKM", "bits", self.bits, 1, 8)
        check_int("DKM", "dim", self.dim, 1, 64)
        check_float("DKM", "tau", self.tau, strict=True)
        check_int("DKM", "iters", self.iters, 0, 100)
        check_choice("DKM", "palette_dtype", self.palette_dtype, tuple(PALETTE_DTYPES))
        check_int("DKM", "chunk_elements", self.chunk_elements, 1)
        check_int("DKM", "seed", self.seed, 0)
        check_float("DKM", "entropy_weight", self.entropy_weight)
        self.palette_granularity()
        for pattern, bits in self.bits_overrides.items():
            check_int("DKM", f"bits_overrides[{pattern!r}]", bits, 1, 8)

    def palette_granularity(self) -> Granularity:
        gran = parse_granularity(self.granularity)
        if gran.kind == "axis" and gran.axis != 0:
            raise ConfigError(f"DKM.granularity takes 'tensor', 'channel' or 'group:G' (G values per palette), "
                              f"not {self.granularity!r}")
        return gran

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        """``tensor`` (one palette per tensor), ``channel`` (per output channel) or ``group:G`` (per G values)."""
        gran = parse_granularity(raw)
        if gran.kind == "axis" and gran.axis != 0:
            raise ConfigError(f"dkm takes 'tensor', 'channel' or 'group:G' palettes, not {raw!r}")
        return {"granularity": str(gran) if gran.kind != "axis" else "channel"}

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """``entropy_weight·Ĥ`` of the palette usage (:func:`learnq.quantizers.entropy.entropy_penalty`); None
        when the weight is 0."""
        return entropy_penalty(quantizers, self.entropy_weight)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> DKMQuantizer:
        try:
            return DKMQuantizer(x, bits or self.bits, self.dim, self.palette_granularity(), self.tau, self.iters,
                                self.palette_dtype, self.chunk_elements, self.seed)
        except QuantizationError as exc:
            raise ConfigError(f"DKM cannot palettize {name!r} with dim={self.dim}: {exc}; leave it out "
                              "(selection exclude) or choose another dim") from exc


__all__ = ["DKM", "DKMQuantizer"]
