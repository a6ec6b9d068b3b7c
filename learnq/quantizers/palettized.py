"""The file side shared by the palettizing training-time quantizers: DKM (:mod:`learnq.quantizers.dkm`, Cho et al.
2021), iPQ (:mod:`learnq.quantizers.ipq`, Stock et al. 2020 §3), layer-by-layer iPQ and Quant-Noise's iPQ noise.

Each stores a palette (LUT) of ``k = 2^bits`` vectors of ``dim`` values per palette group (``granularity``) plus one
``bits``-bit index per ``dim``-long vector of the weight (:mod:`learnq.palette`, :class:`learnq.grid.QuantizedTensor`
with ``palette``); eval, ``handle.freeze()`` and the model file read the same values: palette entry
``palette[group(v), index(v)]`` for vector ``v``, the palette in its stored dtype (``palette_dtype``). The true size is
``bits`` per vector plus the palette at its dtype's width.

A subclass sets ``bits``, ``k``, ``dim``, ``palette_dtype`` and a ``groups`` buffer (each vector's palette group), and
gives :meth:`codebook_value` (the float centroids, ``(n_groups, k, dim)``) and :meth:`indices` (each vector's
palette index); training (``train_forward``) is the method's own.
"""

from __future__ import annotations

from typing import Any

import torch

from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor
from learnq.palette import expand_indices
from learnq.quantizers.base import WeightQuantizer


class PaletteQuantizer(WeightQuantizer):
    """Base of the quantizers whose file holds a palette plus ``bits``-bit indices of ``dim``-long vectors."""

    bits: int
    k: int
    dim: int
    palette_dtype: torch.dtype
    groups: torch.Tensor

    # -- to implement -------------------------------------------------------------------------------------------
    def codebook_value(self) -> torch.Tensor:
        """The float centroids ``(n_groups, k, dim)`` (before the cast to ``palette_dtype``)."""
        raise NotImplementedError

    def indices(self, x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        """The palette index of every ``dim``-long vector of ``x`` (int64, one per vector)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def palette(self) -> torch.Tensor:
        """The palette as stored: the centroids in ``palette_dtype``."""
        return self.codebook_value().detach().to(self.palette_dtype)

    def quantized_value(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pal = self.palette()
            return pal.float()[self.groups, self.indices(x, pal)].reshape(x.shape).to(x.dtype)

    def export_quantized(self, x: torch.Tensor | None = None) -> QuantizedTensor:
        x = self._input(x)
        with torch.no_grad():
            if not bool(torch.isfinite(x).all()):
                raise self.diverged(f"has {int((~torch.isfinite(x)).sum())} NaN or Inf value(s)")
            pal = self.palette()
            if not bool(torch.isfinite(pal).all()):
                raise self.diverged("has NaN or Inf centroids")
            idx = self.indices(x, pal)
        return QuantizedTensor.from_palette(idx, pal.clone(), self.shape, self.granularity, self.bits,
                                            method=self.method, dtype=x.dtype)

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        ones = torch.ones(self.granularity.num_groups(self.shape), device=x.device)
        return expand_indices(self.indices(x, self.palette()), self.dim, self.shape), ones, ones * 0, self.granularity

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        return {"bits": self.bits, "qmin": 0, "scheme": "palette", "palette": self.palette().clone()}

    def _cache_meta(self, x: torch.Tensor) -> tuple:
        return (x.dtype, self.palette_dtype)

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """``bits`` per vector plus the palette (``n_groups·k·dim`` values) at its dtype's width."""
        palette_values = self.granularity.num_groups(self.shape) * self.k * self.dim
        return self.numel // self.dim * self.bits + palette_values * 8 * self.palette_dtype.itemsize


__all__ = ["PaletteQuantizer"]
