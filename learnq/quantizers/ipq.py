"""iPQ: product quantization of weight blocks (Stock, Joulin, Gribonval, Graham, Jégou, "And the Bit Goes Down:
Revisiting the Quantization of Neural Networks", ICLR 2020, §3; Fan et al. 2021 §3.2 "iPQ"; METHODS.md §7;
seeds/003 §2 and §5.2 compare DiffQ with it, Table 2's "PQ" row).

A weight of ``n·d`` values is split into ``n`` subvectors (blocks) of ``d = block_size`` consecutive values (C order,
:mod:`learnq.palette`: for a linear layer whose input size ``d`` divides, blocks of input features of one output row,
Stock et al.'s; for a 3×3 convolution ``d = 9`` is their spatial block). One codebook ``C`` of ``k = 2^bits``
centroids of length ``d`` per layer is learned by k-means (k-means++ seeding, ``iters`` Lloyd steps), minimising

    Σ_v ‖w_v - c_{a(v)}‖²,    a(v) = argmin_j ‖w_v - c_j‖²                        (Stock et al. Eq. 2)

then every block is replaced by its centroid, ``ŵ_v = c_{a(v)}``. The assignments ``a`` are fixed after k-means; the
centroids are fine-tuned by the task loss with the gradient averaged over their blocks (Stock et al. §3.2:
``c ← c - η·(1/|I_c|) Σ_{v∈I_c} ∂L/∂ŵ_v``); the layer's float weight no longer trains once it is quantized (its
gradient is zero; weight decay on it changes nothing the model computes).

Storage: the codebook (``k × d`` values at ``palette_dtype``, float32 or float16) plus one ``bits``-bit code per block
(``bits/d`` bits per weight): a palettized :class:`learnq.grid.QuantizedTensor` (the palette format of
:mod:`learnq.palette`); eval, ``handle.freeze()`` and the model file compute the same values bit for bit.

This method quantizes every selected layer at ``learnq.prepare`` and fine-tunes all codebooks (and the
unquantized parameters) together; Stock et al.'s iterative schedule (the layers one after another, the
not-yet-quantized ones fine-tuned in float between steps) is :mod:`learnq.quantizers.ipq_layerwise`
(``learnq.IPQLayerwise``). Quant-Noise with iPQ as its noise (``QuantNoise(quantizer="ipq")``)
reuses :class:`CodebookQuantizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learnq.checks import check_choice, check_int
from learnq.clustering import init_centroids, lloyd
from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.palette import PALETTE_DTYPES, check_vectors, nearest
from learnq.quantizers.config import QATConfig
from learnq.quantizers.palettized import PaletteQuantizer

MAX_CODEBOOK_BITS = 12  # at most 4096 centroids (Stock et al. use 256); k-means++ seeds them one by one
KMEANS_ITERS = 25  # Lloyd steps of the k-means at learnq.prepare (IPQ.iters' default; Quant-Noise's seeding)


class _MeanGrad(torch.autograd.Function):
    """Identity forward; the gradient of centroid ``j`` divided by the number of blocks assigned to it."""

    @staticmethod
    def forward(ctx, codebook: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(counts)
        return codebook.view_as(codebook)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (counts,) = ctx.saved_tensors
        return grad / counts.clamp_min(1).to(grad.dtype).reshape(1, -1, 1), None


class _Replace(torch.autograd.Function):
    """Forward ``y``; backward a zero gradient to ``x`` and the gradient to ``y``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return torch.zeros_like(grad), grad


def mean_grad(codebook: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``codebook`` (``(1, k, d)``) whose gradient is averaged over the ``counts[j]`` blocks of each centroid."""
    return _MeanGrad.apply(codebook, counts)


class CodebookQuantizer(PaletteQuantizer):
    """Base of the product quantizers: one codebook ``(1, 2^bits, d)`` per tensor, one code per ``d``-block (``dim``);
    export as a palettized tensor (:class:`PaletteQuantizer`). Subclasses give :meth:`codebook_value` and
    :meth:`indices`."""

    def __init__(self, x: torch.Tensor, bits: int, block_size: int, palette_dtype: str = "float32",
                 name: str = "") -> None:
        shape = tuple(x.shape)
        super().__init__(shape, Granularity("tensor"))
        try:
            check_vectors(shape, self.granularity, block_size, name or "weight")
        except QuantizationError as exc:
            raise ConfigError(f"{self.method} cannot split {name or 'a weight'} of shape {list(shape)} into blocks "
                              f"of {block_size}: {exc}") from exc
        self.name = name
        self.bits, self.dim, self.k = bits, block_size, 2**bits
        self.palette_dtype = PALETTE_DTYPES[palette_dtype]
        self.register_buffer("groups", torch.zeros(self.numel // block_size, dtype=torch.int64, device=x.device),
                             persistent=False)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` float32 blocks of ``x``."""
        return x.float().reshape(-1, self.dim)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "block_size": self.dim}


class IPQQuantizer(CodebookQuantizer):
    """iPQ of one tensor: codebook (a Parameter, fine-tuned), assignments fixed at k-means."""

    method = "ipq"

    def __init__(self, x: torch.Tensor, bits: int, block_size: int, iters: int = KMEANS_ITERS, seed: int = 0,
                 palette_dtype: str = "float32", name: str = "") -> None:
        super().__init__(x, bits, block_size, palette_dtype, name)
        self.iters, self.seed = iters, seed
        centroids, assignments, objective = self.kmeans(x)
        self.kmeans_objective = objective  # Σ_v ‖w_v - c_a(v)‖² at the assignments below
        self.codebook = nn.Parameter(centroids)
        self.register_buffer("assignments", assignments)
        self.register_buffer("counts", torch.bincount(self.assignments, minlength=self.k))

    def kmeans(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """k-means of ``x``'s blocks: k-means++ seeds from ``seed``, ``iters`` Lloyd steps; the centroids
        ``(1, k, d)``, every block's nearest centroid and the objective ``Σ_v ‖w_v - c_a(v)‖²`` there."""
        with torch.no_grad():
            vectors = self.blocks(x.detach())
            seeds = init_centroids(vectors, self.groups, 1, self.k, self.seed).to(x.device)
            centroids, history = lloyd(vectors, seeds, self.groups, self.iters)
            return centroids, nearest(vectors, centroids, self.groups), history[-1]

    def codebook_value(self) -> torch.Tensor:
        return self.codebook

    def indices(self, x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        return self.assignments

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        c = mean_grad(self.codebook, self.counts)
        if self.palette_dtype != torch.float32:  # train on the stored values (straight through the rounding)
            c = c + (c.detach().to(self.palette_dtype).float() - c.detach())
        y = c[0][self.assignments].reshape(x.shape).to(x.dtype)
        # the float weight is replaced: it gets a zero gradient (not None, so that DDP sees every parameter used)
        return _Replace.apply(x, y) if x.requires_grad else y

    def extra_repr(self) -> str:
        return f"bits={self.bits}, block_size={self.dim}, kmeans_objective={self.kmeans_objective:.4g}"


@dataclass(frozen=True)
class IPQ(QATConfig):
    """iPQ (Stock et al. 2020): per layer a codebook of ``2^bits`` centroids of ``block_size`` values, k-means
    (``iters`` Lloyd steps from k-means++, ``seed``) at ``learnq.prepare``, then the centroids fine-tuned (gradient
    averaged over their blocks); ``palette_dtype`` of the stored codebook."""

    method = "ipq"
    description = "iPQ: product quantization, a k-means codebook of weight blocks per layer, fine-tuned (Stock et al.)"
    bits: int = 8
    block_size: int = 4
    iters: int = KMEANS_ITERS
    palette_dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        check_int("IPQ", "bits", self.bits, 1, MAX_CODEBOOK_BITS)
        check_int("IPQ", "block_size", self.block_size, 1)
        check_int("IPQ", "iters", self.iters, 0)
        check_choice("IPQ", "palette_dtype", self.palette_dtype, tuple(PALETTE_DTYPES))
        check_int("IPQ", "seed", self.seed, 0)
        for pattern, bits in self.bits_overrides.items():
            check_int("IPQ", f"bits_overrides[{pattern!r}]", bits, 1, MAX_CODEBOOK_BITS)

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        if raw not in ("tensor", "channel"):
            raise ConfigError(f"ipq has one codebook per tensor; give granularity 'tensor' (or leave it out), "
                              f"not {raw!r}")
        return {}

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> IPQQuantizer:
        return IPQQuantizer(x, bits or self.bits, self.block_size, self.iters, self.seed, self.palette_dtype, name)


__all__ = ["IPQ", "IPQQuantizer", "CodebookQuantizer", "KMEANS_ITERS", "MAX_CODEBOOK_BITS", "mean_grad"]
