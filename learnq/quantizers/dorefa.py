"""DoReFa weight quantization (Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low
Bitwidth Gradients", 2016, §2.3 Eq. 9; METHODS.md §7): the weight quantizer of PACT (Choi et al. 2018) in seeds/000
§4.3, Table 5 (PACT + DoReFa at 2W2A and 4W4A).

Training forward, per tensor, for ``k`` bits:

    t = tanh(w),   u = t / (2·max|t|) + ½   ∈ [0, 1],   q_k(u) = round((2^k - 1)·u) / (2^k - 1),
    w_k = 2·q_k(u) - 1                       ∈ [-1, 1]

with the straight-through estimator through the rounding only (the gradient flows through ``tanh`` and the
normalisation by ``max|t|``, as in the reference implementation). The grid is ``2^k`` levels on ``[-1, 1]``, the same
for every tensor: the weights' scale is normalised away (DoReFa nets rely on BatchNorm for it). ``rescale=True``
(not in the paper; for networks without normalisation layers) multiplies ``w_k`` by ``E = mean|w|`` (detached, per
tensor; the scale DoReFa itself uses for 1-bit weights, §2.3), so the levels are ``E·(2q/(2^k-1) - 1)``.

Export: codes ``q = round((2^k - 1)·u)`` in ``[0, 2^k - 1]``, one affine step ``2E/(2^k - 1)`` and offset ``-E``
(``E = 1`` without ``rescale``); the eval forward is ``dequantize`` of those codes, so it equals the model file.
True size: ``k`` bits per weight plus the step and offset (2 × float32) per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from learnq.checks import check_int
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.quantizers.base import WeightQuantizer
from learnq.quantizers.config import QATConfig
from learnq.ste import round_ste


def dorefa_normalize(w: torch.Tensor) -> torch.Tensor:
    """``tanh(w) / (2·max|tanh(w)|) + ½`` in [0, 1] (float32; differentiable). An all-zero tensor maps to ½."""
    t = torch.tanh(w.float())
    m = t.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    return t / (2 * m) + 0.5


def dorefa_weights(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's ``w_k = 2·q_k(tanh(w)/(2·max|tanh(w)|) + ½) - 1`` with the straight-through rounding (float32)."""
    levels = 2**bits - 1
    return 2 * (round_ste(dorefa_normalize(w) * levels) / levels) - 1


class DoReFaQuantizer(WeightQuantizer):
    """DoReFa weights: ``bits``-bit uniform grid on [-1, 1] (times ``mean|w|`` with ``rescale``), one per tensor."""

    method = "dorefa"

    def __init__(self, shape: tuple[int, ...], bits: int, rescale: bool = False) -> None:
        super().__init__(shape, Granularity("tensor"))
        self.bits = bits
        self.rescale = rescale

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """E: ``mean|w|`` with ``rescale`` (1 for an all-zero tensor), else 1; float32 0-dim, no gradient."""
        if not self.rescale:
            return torch.ones((), device=x.device)
        e = x.detach().float().abs().mean()
        return torch.where(e > 0, e, torch.ones_like(e))

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = dorefa_weights(x, self.bits)
        if self.rescale:
            y = y * self._scale(x)
        return y.to(x.dtype)

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        levels = 2**self.bits - 1
        codes = torch.round(dorefa_normalize(x) * levels).clamp_(0, levels).to(torch.int32)
        e = self._scale(x).reshape(1)
        return codes, 2 * e / levels, -e, self.granularity

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        return {"bits": self.bits, "qmin": 0, "scheme": "affine"}

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """``bits`` per weight plus one float32 step and offset."""
        return self.numel * self.bits + 64

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rescale={self.rescale}"


@dataclass(frozen=True)
class DoReFa(QATConfig):
    """DoReFa weights (Zhou et al. 2016; PACT's weight quantizer, seeds/000 Table 5): ``bits`` fixed (1..16), one
    grid on [-1, 1] per tensor after tanh normalisation, straight-through rounding; ``rescale=True`` scales the
    levels by ``mean|w|`` (for networks without BatchNorm; not in the paper)."""

    method = "dorefa"
    description = "DoReFa weights: tanh normalisation, k-bit uniform grid on [-1, 1], STE (Zhou et al. 2016)"
    bits: int = 4
    rescale: bool = False

    def validate(self) -> None:
        check_int("DoReFa", "bits", self.bits, 1, 16)
        if not isinstance(self.rescale, bool):
            raise ConfigError(f"DoReFa.rescale must be true or false, got {self.rescale!r}")

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        if raw != "tensor" and raw != "channel":
            raise ConfigError(f"dorefa has one grid per tensor; give granularity 'tensor' (or leave it out), "
                              f"not {raw!r}")
        return {}  # one grid per tensor whatever the recipe says (the recipe default "channel" included)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> DoReFaQuantizer:
        return DoReFaQuantizer(tuple(x.shape), bits or self.bits, self.rescale)


__all__ = ["DoReFa", "DoReFaQuantizer", "dorefa_normalize", "dorefa_weights"]
