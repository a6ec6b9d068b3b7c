"""Quant-Noise (Fan et al., "Training with Quantization Noise for Extreme Model Compression", ICLR 2021, §4, Eq. 4;
METHODS.md §7): seeds/003's Quant-Noise baseline (§2, §5.2, Table 2: "QN 8 bits", "QN 4 bits").

At every training forward the weight is split into blocks of ``block_size`` consecutive values (C order: for a linear
weight whose row length ``block_size`` divides, blocks of input features of one output row, Fan et al.'s blocks; the
last block of a tensor may be shorter), each block is selected independently with probability ``rate`` (p), and

    w̃ = φ(w) on the selected blocks (straight-through gradient),    w̃ = w on the others (the exact gradient)

so only a fraction p of the weights sees quantization noise at each step, the rest trains in float, with unbiased
gradients (the reference code: ``w + ((φ(w) - w)·mask).detach()``). ``p = 1`` is STE QAT, ``p = 0`` float training.
At evaluation, export and in the model file every block is quantized: ``φ(w)`` for the whole tensor.

The noise's quantizer φ (``quantizer``):

* ``"scalar"``: int``bits`` on the min-max range per output channel (``granularity="channel"``, the default of
  every learnq weight quantizer) or per tensor (``"tensor"``: Fan et al.'s int4/int8), the same grid as STE QAT
  (:mod:`learnq.quantizers.ste`): export, sizes and the model file are STE's;
* ``"ipq"``: product quantization (:mod:`learnq.quantizers.ipq`): each block is replaced by its nearest centroid of
  the layer's codebook of ``2^bits`` centroids of length ``block_size``, seeded by k-means++ and refreshed from the
  current weights by ``ipq_iters`` Lloyd steps per training forward (Fan et al. §4.2 recompute the codebook
  periodically or use the proxy φ = 0; learnq uses the real φ, at the cost of an ``n × 2^bits`` assignment per
  step); eval and export are the palettized tensor (codebook + packed codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from learnq.checks import check_choice, check_float, check_int
from learnq.clustering import init_centroids, lloyd
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.palette import nearest
from learnq.quantizers.base import WeightQuantizer
from learnq.quantizers.config import QATConfig
from learnq.quantizers.ipq import KMEANS_ITERS, MAX_CODEBOOK_BITS, CodebookQuantizer
from learnq.quantizers.ste import STE_GRANULARITIES, STE_SCHEMES, STEQuantizer
from learnq.ste import ste

NOISE_QUANTIZERS = ("scalar", "ipq")


def block_mask(shape: tuple[int, ...], block_size: int, rate: float, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of ``shape``: blocks of ``block_size`` consecutive values (C order; the last may be shorter)
    each True with probability ``rate``, independently."""
    numel = 1
    for s in shape:
        numel *= s
    n_blocks = -(-numel // block_size)
    chosen = torch.rand(n_blocks, device=device, generator=generator) < rate
    return chosen.repeat_interleave(block_size)[:numel].reshape(shape)


def apply_noise(x: torch.Tensor, quantized: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``quantized`` (straight-through gradient) where ``mask``, ``x`` (its value and gradient exactly) elsewhere."""
    return torch.where(mask, ste(x, quantized), x)


class QuantNoiseQuantizer(STEQuantizer):
    """Quant-Noise with the scalar quantizer: STE's min-max int grid on a random fraction ``rate`` of the blocks."""

    method = "quant_noise"

    def __init__(self, shape: tuple[int, ...], bits: int, granularity: Granularity, scheme: str, rate: float,
                 block_size: int) -> None:
        super().__init__(shape, bits, granularity, scheme)
        self.rate = rate
        self.block_size = block_size

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = block_mask(tuple(x.shape), self.block_size, self.rate, x.device)
        return apply_noise(x, self.quantized_value(x), mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rate={self.rate}, block_size={self.block_size}"


class PQNoiseQuantizer(CodebookQuantizer):
    """Quant-Noise with iPQ as the noise: a codebook of ``2^bits`` centroids of ``block_size`` values (a buffer;
    k-means at preparation, then ``iters`` Lloyd steps from the current weights at every training forward); the
    selected blocks take their nearest centroid (straight-through gradient), the others stay float."""

    method = "quant_noise"

    def __init__(self, x: torch.Tensor, bits: int, block_size: int, rate: float, iters: int, seed: int = 0,
                 name: str = "") -> None:
        super().__init__(x, bits, block_size, "float32", name)
        self.rate, self.iters = rate, iters
        vectors = self.blocks(x.detach())
        seeds = init_centroids(vectors, self.groups, 1, self.k, seed).to(x.device)
        self.register_buffer("centroids", lloyd(vectors, seeds, self.groups, KMEANS_ITERS)[0])

    def codebook_value(self) -> torch.Tensor:
        return self.centroids

    def indices(self, x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        return nearest(self.blocks(x.detach()), palette, self.groups)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.iters:
            with torch.no_grad():
                self.centroids.copy_(lloyd(self.blocks(x.detach()), self.centroids, self.groups, self.iters)[0])
        mask = block_mask(tuple(x.shape), self.dim, self.rate, x.device)
        return apply_noise(x, self.quantized_value(x), mask)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, block_size={self.dim}, rate={self.rate}, iters={self.iters}"


@dataclass(frozen=True)
class QuantNoise(QATConfig):
    """Quant-Noise (Fan et al. 2021): quantization noise on a random fraction ``rate`` of ``block_size``-long blocks
    per step; ``quantizer="scalar"`` (int ``bits``, min-max per channel or per tensor) or ``"ipq"`` (a codebook of
    ``2^bits`` centroids of ``block_size`` values per layer, ``ipq_iters`` Lloyd steps per forward)."""

    method = "quant_noise"
    description = "Quant-Noise: int or iPQ quantization noise on a random subset of weight blocks (Fan et al. 2021)"
    bits: int = 8
    rate: float = 0.1
    block_size: int = 8
    quantizer: str = "scalar"
    granularity: str = "channel"
    scheme: str = "affine"
    ipq_iters: int = 1
    seed: int = 0

    def validate(self) -> None:
        check_int("QuantNoise", "bits", self.bits, 1, 16)
        if check_float("QuantNoise", "rate", self.rate) > 1:
            raise ConfigError(f"QuantNoise.rate is a probability in [0, 1], got {self.rate!r}")
        check_int("QuantNoise", "block_size", self.block_size, 1)
        check_choice("QuantNoise", "quantizer", self.quantizer, NOISE_QUANTIZERS)
        check_choice("QuantNoise", "granularity", self.granularity, STE_GRANULARITIES)
        check_choice("QuantNoise", "scheme", self.scheme, STE_SCHEMES)
        check_int("QuantNoise", "ipq_iters", self.ipq_iters, 0)
        check_int("QuantNoise", "seed", self.seed, 0)
        if self.quantizer == "ipq":
            check_int("QuantNoise", "bits (iPQ: log2 of the codebook size)", self.bits, 1, MAX_CODEBOOK_BITS)

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        if options.get("quantizer") == "ipq":
            if raw not in ("tensor", "channel"):
                raise ConfigError(f"quant_noise with quantizer 'ipq' has one codebook per tensor, not {raw!r}")
            return {"granularity": "tensor"}
        return super().from_granularity(raw, options)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> WeightQuantizer:
        if self.quantizer == "ipq":
            return PQNoiseQuantizer(x, bits or self.bits, self.block_size, self.rate, self.ipq_iters,
                                    self.seed, name=name)
        return QuantNoiseQuantizer(tuple(x.shape), bits or self.bits, Granularity.parse(self.granularity),
                                   self.scheme, self.rate, self.block_size)


__all__ = ["NOISE_QUANTIZERS", "PQNoiseQuantizer", "QuantNoise", "QuantNoiseQuantizer", "apply_noise", "block_mask"]
