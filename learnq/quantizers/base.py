"""The base of every training-time weight quantizer: a ``torch.nn.utils.parametrize`` parametrization plus a typed
config (DESIGN.md, "QAT: quantizers attached to parameters"; METHODS.md sections 4-6).

A quantizer is an ``nn.Module`` registered as the LAST parametrization of a parameter, so it wraps any layer's
weight (dense, conv, depthwise, tied) without rewriting the layer, and sees the output of the parametrizations
registered before it (SatNL's ``a·tanh(w/a)``). Its contract:

* ``forward(x)`` in training mode is the method's training function (STE fake quant, LSQ, the nested layer,
  DiffQ's pseudo-quantization noise); in eval mode it is the real quantized tensor, computed once and cached until
  the mode changes or the parameter (or the quantizer's own parameters) change: no work, and no CPU round trip, per
  eval forward;
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
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from learnq.attach import Selection
from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor, QuantParams, dequantize
from learnq.ste import ste

CONFIG_VERSION = 1


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
class WeightQuantizer(nn.Module):
    """Base parametrization. Subclasses implement ``train_forward``, ``_grid`` and ``true_size_bits``."""

    method: ClassVar[str] = "base"

    def __init__(self, shape: tuple[int, ...], granularity: Granularity) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.granularity = granularity
        self.name = ""  # set by prepare, for messages
        self._clock: ForwardClock | None = None
        self._sources: list[torch.Tensor] | None = None  # [original, tensors of earlier parametrizations]
        self._pre: list[nn.Module] = []  # parametrizations registered before this one
        self._train_cache: tuple[int, torch.Tensor] | None = None
        self._eval_cache: tuple | None = None  # (dtype, ((tensor, version, data_ptr), ...), value)
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

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._eval_cache = None
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
        y = self._eval_value(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return ste(x, y)
        return y

    def _eval_value(self, x: torch.Tensor) -> torch.Tensor:
        tracked = self._tracked(x)
        cached = self._eval_cache
        if tracked is not None and cached is not None and cached[0] == x.dtype and len(cached[1]) == len(tracked):
            for t, (ref, version, ptr) in zip(tracked, cached[1]):  # noqa: B905 - lengths checked
                if t is not ref or (t is not None and (t._version != version or t.data_ptr() != ptr)):
                    break
            else:
                return cached[2]
        y = self.quantized_value(x)
        self._eval_cache = None if tracked is None else (
            x.dtype, tuple((t, None if t is None else t._version, None if t is None else t.data_ptr())
                           for t in tracked), y)
        return y

    def quantized_value(self, x: torch.Tensor) -> torch.Tensor:
        """The real quantized tensor (no gradient, no cache): ``dequantize(*_grid(x))``, as export computes it."""
        with torch.no_grad():
            codes, scale, offset, gran = self._grid(x.detach())
            return dequantize(codes, gran, QuantParams(scale, offset), x.dtype)

    def _tracked(self, x: torch.Tensor) -> tuple | None:
        """The tensors the eval value depends on (the sources, the quantizer's own parameters and buffers), or None
        when ``x`` cannot be tracked (a Parameter other than the attached one, or a plain tensor when unprepared).
        The eval cache holds them and compares identity, version (in-place writes) and storage (``.to()``,
        ``.data =``): a few attribute reads per forward."""
        sources = self._sources
        if sources is None:
            if not isinstance(x, nn.Parameter):
                return None
            sources = [x]
        elif isinstance(x, nn.Parameter) and x is not sources[0]:
            return None
        return (*sources, *self._parameters.values(), *self._buffers.values())

    def invalidate(self) -> None:
        """Drop the cached eval tensor (call after changing weights through ``.data`` in eval mode)."""
        self._eval_cache = None
        self._train_cache = None

    def train(self, mode: bool = True) -> WeightQuantizer:
        self.invalidate()
        return super().train(mode)

    # -- export and inputs --------------------------------------------------------------------------------------
    def current_input(self) -> torch.Tensor:
        """What this quantizer sees now: the original parameter through the parametrizations before it."""
        if self._sources is None:
            raise ConfigError(f"quantizer {type(self).__name__} is not attached by learnq.prepare; pass the tensor")
        x = self._sources[0]
        for p in self._pre:
            x = p(x)
        return x

    def _input(self, x: torch.Tensor | None) -> torch.Tensor:
        if x is not None:
            return x
        with torch.no_grad():
            return self.current_input()

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


# -- configs ------------------------------------------------------------------------------------------------------
def check_int(cls: str, name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        top = "" if hi is None else f" and <= {hi}"
        raise ConfigError(f"{cls}.{name} must be an integer >= {lo}{top}, got {value!r}")
    return value


def check_float(cls: str, name: str, value: object, lo: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        rel = ">" if strict else ">="
        raise ConfigError(f"{cls}.{name} must be a finite number {rel} {lo}, got {value!r}")
    return float(value)


def check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{cls}.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def _selection_to_dict(sel: Selection | None) -> dict | None:
    if sel is None:
        return None
    return {f.name: (list(v) if isinstance(v := getattr(sel, f.name), tuple) else v) for f in fields(sel)}


def _selection_from_dict(data: object) -> Selection | None:
    if data is None or isinstance(data, Selection):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"selection must be a dict of Selection fields or null, got {data!r}")
    known = {f.name for f in fields(Selection)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"selection has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    return Selection(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


@dataclass(frozen=True)
class QATConfig:
    """Base of the typed method configs. ``bits_overrides`` maps parameter-name globs to fixed bit-widths (e.g.
    ``{"0.weight": 8}`` keeps the first layer at 8 bits); ``selection`` chooses the parameters (default per method).
    """

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_lr: ClassVar[float | None] = None  # lr of the quantizer parameters' group (None: the model's lr)
    bits_overrides: dict[str, int] = field(default_factory=dict, kw_only=True)
    selection: Selection | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.bits_overrides, Mapping):
            raise ConfigError(f"{name}.bits_overrides must be a dict of name glob -> bits, got {self.bits_overrides!r}")
        for pattern, bits in self.bits_overrides.items():
            if not isinstance(pattern, str):
                raise ConfigError(f"{name}.bits_overrides keys must be name globs (str), got {pattern!r}")
            check_int(name, f"bits_overrides[{pattern!r}]", bits, 1, 16)
        object.__setattr__(self, "bits_overrides", dict(self.bits_overrides))
        if self.selection is not None and not isinstance(self.selection, Selection):
            object.__setattr__(self, "selection", _selection_from_dict(self.selection))
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ConfigError naming the field."""

    def default_selection(self) -> Selection:
        return Selection()

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> WeightQuantizer:
        """The quantizer for parameter ``name`` whose current (pre-quantizer) value is ``x``; ``bits`` is its
        override from ``bits_overrides`` or None."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "version": CONFIG_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _selection_to_dict(value) if f.name == "selection" else (
                dict(value) if isinstance(value, dict) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QATConfig:
        """Inverse of :meth:`to_dict`; on the base class, dispatches on ``data["method"]``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a QAT config must be a dict, got {type(data).__name__}")
        data = dict(data)
        method = data.pop("method", cls.method or None)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"QAT config version {version!r} is not supported (this learnq reads {CONFIG_VERSION})")
        target = cls
        if not cls.method:
            from learnq.quantizers import QAT_METHODS

            if method not in QAT_METHODS:
                raise ConfigError(f"QAT method {method!r} is unknown; use one of {', '.join(QAT_METHODS)}")
            target = QAT_METHODS[method]
        elif method != cls.method:
            raise ConfigError(f"config for method {method!r} given to {cls.__name__} ({cls.method!r})")
        known = {f.name: f for f in fields(target)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"{target.__name__} has no field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING
                   and n not in data]
        if missing:
            raise ConfigError(f"{target.__name__} needs field(s) {missing}")
        return target(**data)


__all__ = ["WeightQuantizer", "QATConfig", "ForwardClock", "ClockPreHook", "ClockPostHook", "per_tensor", "check_int",
           "check_float", "check_choice", "CONFIG_VERSION"]
