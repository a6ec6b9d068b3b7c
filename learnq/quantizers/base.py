"""The base of every training-time weight quantizer (DESIGN.md, "QAT: quantizers attached to parameters"; METHODS.md
sections 4-6): a :class:`learnq.parametrization.WeightParametrization` with a training forward.

A quantizer is registered as the LAST parametrization of a parameter, so it wraps any layer's weight (dense, conv,
depthwise, tied) without rewriting the layer, and sees the output of the parametrizations registered before it
(SatNL's ``a·tanh(w/a)``). Its contract:

* ``forward(x)`` in training mode is the method's training function (STE fake quant, LSQ, the nested layer,
  DiffQ's pseudo-quantization noise); in eval mode it is the real quantized tensor, from the base's one cache (no
  work, and no CPU round trip, per eval forward), with the straight-through gradient to ``x``;
* ``export_quantized(x) -> QuantizedTensor`` (the protocol ``learnq.save`` reads) and the eval forward go through
  the same ``_grid`` and the same :func:`learnq.grid.dequantize`, so ``qt.dequantize()`` is bit-identical to the
  eval forward, and so is the model after ``handle.freeze()``;
* ``true_size_bits()`` (integer, what the method stores) and ``size_bits()`` (a tensor; differentiable for DiffQ).

Tied parameters share ONE quantizer module (one logit, one step). Within one forward of the prepared model the
training output is computed once and reused (:class:`ForwardClock`): a tied weight then carries one noise sample and
one autograd node, so custom backward rules (the nested layer's) see the total gradient of all uses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from learnq.errors import QuantizationError
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor, QuantParams, dequantize
from learnq.parametrization import WeightParametrization


# -- forward clock ------------------------------------------------------------------------------------------------
class ForwardClock:
    """Counts the forwards of the prepared (root) model; quantizers reuse their training output within one forward.

    ``gen`` is incremented when the root's outermost forward starts; ``depth > 0`` while it runs. After the forward
    the per-forward outputs are dropped (they would keep a weight-sized tensor alive).
    """

    def __init__(self) -> None:
        self.gen = 0
        self.depth = 0
        self.members: list[WeightQuantizer] = []


class ClockPreHook:
    """Forward pre-hook of the root model (a callable object, so that ``copy.deepcopy`` keeps it consistent)."""

    def __init__(self, clock: ForwardClock) -> None:
        self.clock = clock

    def __call__(self, module: nn.Module, args: Any) -> None:
        if self.clock.depth == 0:
            self.clock.gen += 1
        self.clock.depth += 1


class ClockPostHook:
    """Forward hook of the root model (registered with ``always_call=True``)."""

    def __init__(self, clock: ForwardClock) -> None:
        self.clock = clock

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.clock.depth = max(0, self.clock.depth - 1)
        if self.clock.depth == 0:
            for q in self.clock.members:
                q._train_cache = None


# -- the quantizer module -----------------------------------------------------------------------------------------
class WeightQuantizer(WeightParametrization):
    """Base of the training-time quantizers. Subclasses implement ``train_forward``, ``_grid``, ``_export_meta`` and
    ``true_size_bits``."""

    straight_through = True

    def __init__(self, shape: tuple[int, ...], granularity: Granularity) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.granularity = granularity
        self._clock: ForwardClock | None = None
        self._train_cache: tuple[int, torch.Tensor] | None = None
        self._used_gen = -1

    # -- to implement -------------------------------------------------------------------------------------------
    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        """(int32 codes, scale, offset, granularity) of the real quantization of ``x`` (no gradient)."""
        raise NotImplementedError

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        """bits, qmin, scheme and group_bits of the exported tensor."""
        raise NotImplementedError

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        raise NotImplementedError

    def size_bits(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """The size the method trains against (bits, a tensor); fixed-bit methods return the true size."""
        device = self._device()
        return torch.tensor(float(self.true_size_bits(x)), device=device)

    def quant_parameters(self) -> list[nn.Parameter]:
        """The quantizer's own trainable tensors (bits logits, steps, scales): they get their own optimizer group."""
        return [p for p in self.parameters(recurse=False) if p.requires_grad]

    def summary(self) -> dict[str, Any]:
        """Method, shape, true size in bits and the bits a report shows (:meth:`summary_bits`)."""
        return {"method": self.method, "shape": list(self.shape), "true_bits": self.true_size_bits(),
                "bits": self.summary_bits()}

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self.invalidate_eval()
        clock = self._clock
        if clock is None or clock.depth == 0:
            if clock is not None:
                self._used_gen = clock.gen
            return self.train_forward(x)
        cached = self._train_cache
        if cached is not None and cached[0] == clock.gen:
            return cached[1]
        out = self.train_forward(x)
        self._train_cache = (clock.gen, out)
        self._used_gen = clock.gen
        return out

    def quantized_value(self, x: torch.Tensor) -> torch.Tensor:
        """The real quantized tensor (no gradient, no cache): ``dequantize(*_grid(x))``, as export computes it."""
        with torch.no_grad():
            codes, scale, offset, gran = self._grid(x.detach())
            return dequantize(codes, gran, QuantParams(scale, offset), x.dtype)

    def invalidate_eval(self) -> None:
        """Drop the cached eval tensor only."""
        super().invalidate()

    def invalidate(self) -> None:
        """Drop the cached eval tensor (call after changing weights through ``.data`` in eval mode)."""
        super().invalidate()
        self._train_cache = None

    def train(self, mode: bool = True) -> WeightQuantizer:
        self.invalidate()
        return super().train(mode)

    # -- export -------------------------------------------------------------------------------------------------
    def export_quantized(self, x: torch.Tensor | None = None) -> QuantizedTensor:
        """The quantized tensor; ``qt.dequantize()`` equals the eval-mode forward bit for bit."""
        x = self._input(x)
        with torch.no_grad():
            if not bool(torch.isfinite(x).all()):
                raise self.diverged(f"has {int((~torch.isfinite(x)).sum())} NaN or Inf value(s)")
            codes, scale, offset, gran = self._grid(x.detach())
            if not bool(torch.isfinite(scale).all()):
                raise self.diverged("has a step that is NaN or Inf")
            meta = self._export_meta(x, codes)
        return QuantizedTensor(codes=codes, scale=scale, offset=offset, granularity=gran, method=self.method,
                               dtype=x.dtype, **meta)

    def diverged(self, what: str) -> QuantizationError:
        """The error for a state no model file can hold (NaN or Inf weights, steps, bits): ``what`` is wrong."""
        return QuantizationError(f"{self.method}-quantized parameter {self.name or '(unnamed)'} {what}: the training "
                                 "diverged (lower the learning rate, clip the gradients) or the weights were NaN/Inf")

    def used_in_last_forward(self) -> bool:
        """True when the training forward ran during the root model's latest forward (always True if unprepared)."""
        clock = self._clock
        return clock is None or self._used_gen == clock.gen

    def source_frozen(self) -> bool:
        """True when the parameter this quantizer reads has ``requires_grad=False`` (a frozen parameter)."""
        return bool(self._sources) and not self._sources[0].requires_grad

    def _device(self) -> torch.device:
        for t in (*self.parameters(recurse=False), *self.buffers(recurse=False)):
            return t.device
        if self._sources:
            return self._sources[0].device
        return torch.device("cpu")


def per_tensor(granularity: Granularity, shape: tuple[int, ...]) -> Granularity:
    """1-D tensors (biases) and scalars always get one step: a per-element "channel" step would store every value."""
    if len(shape) <= 1 and granularity.kind == "axis":
        return Granularity("tensor")
    return granularity


__all__ = ["WeightQuantizer", "ForwardClock", "ClockPreHook", "ClockPostHook", "per_tensor"]
