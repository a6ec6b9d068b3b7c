"""The one base of every quantized-weight parametrization (DESIGN.md, "one object per quantized parameter").

A quantized parameter is a ``torch.nn.utils.parametrize`` parametrization registered as the LAST one on a weight (it
wraps any layer's parameter without rewriting the layer, and sees the output of the parametrizations before it, e.g.
SatNL's ``a·tanh(w/a)``). Three kinds derive from :class:`WeightParametrization`:

* training-time quantizers (:class:`learnq.quantizers.base.WeightQuantizer`: STE, LSQ, nested, DiffQ), whose
  training forward is the method's own and whose eval forward is the real quantized tensor;
* the PTQ weight quantizer (:class:`learnq.ptq.ptq_weight.PTQWeight`), a grid with a settable clipping value α;
* the frozen quantized weight (:class:`learnq.quantized.QuantizedWeight`), codes and steps loaded from a file or
  left by ``handle.freeze()``.

The protocol every one implements, and that save, size accounting, export and reports read:

* ``export_quantized(x=None) -> QuantizedTensor``: the quantized tensor (codes, steps, offsets, widths);
* ``forward(x)``: ``export_quantized(x).dequantize()`` bit for bit (subclasses may compute it without building the
  QuantizedTensor, through the same grid and the same :func:`learnq.grid.dequantize`), computed once and cached
  until a tensor it depends on changes: the parameter it reads (identity, in-place writes through the version
  counter, storage through ``data_ptr``, so ``.data =`` and ``.to()`` are seen), the parametrization's own
  parameters and buffers, the dtype and any other state the subclass names (:meth:`_cache_meta`), or the cached
  tensor itself written in place. No work, and no CPU round trip, per eval forward;
* ``summary()``: one JSON row for reports (method, shape, bits).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ConfigError
from learnq.grid import QuantizedTensor
from learnq.ste import ste


class WeightParametrization(nn.Module):
    """Base parametrization: one cache, one ``export_quantized``, one forward.

    Subclasses implement :meth:`export_quantized` (and may override :meth:`quantized_value` with a cheaper
    computation of the same values). ``straight_through``: the eval forward passes the identity gradient to its input
    when gradients are on (training-time quantizers); otherwise the weight gets no gradient (PTQ, frozen).
    """

    method: ClassVar[str] = "base"
    straight_through: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        # plain attributes (no tensor, no module) straight into __dict__: nn.Module.__setattr__'s checks cost more
        # than the rest of a small parametrization's construction, which load repeats per quantized tensor
        self.__dict__.update(
            name="",  # the parameter's name, for messages (set by whoever attaches it)
            _sources=None,  # [original, tensors of earlier parametrizations]
            _pre=[],  # parametrizations registered before this one
            _cache=None,  # (meta, ((tensor, version, data_ptr), ...), value, value's version)
            _export_cache=None,  # (meta, ((tensor, version, data_ptr), ...), qt, qt's versions)
            computations=0)  # how many times the quantized value was computed (cache misses)

    # -- to implement -------------------------------------------------------------------------------------------
    def export_quantized(self, x: torch.Tensor | None = None) -> QuantizedTensor:
        """The quantized tensor of ``x`` (default: the attached parameter through the parametrizations before)."""
        raise NotImplementedError

    def quantized_value(self, x: torch.Tensor) -> torch.Tensor:
        """The dequantized tensor (no gradient, no cache): ``export_quantized(x).dequantize()``."""
        with torch.no_grad():
            return self.export_quantized(x).dequantize()

    def summary_bits(self) -> Any:
        """The bits a report shows for this parameter (an int; a list for per-group widths)."""
        return getattr(self, "bits", None)

    def summary(self) -> dict[str, Any]:
        """One JSON row: method, shape and bits of the quantized tensor."""
        qt = self.export_quantized()
        return {"method": qt.method, "shape": list(qt.shape), "bits": self.summary_bits()}

    # -- the cache ----------------------------------------------------------------------------------------------
    def _cache_meta(self, x: torch.Tensor) -> tuple:
        """Non-tensor state the value depends on (compared with ``==``)."""
        return (x.dtype,)

    def _tracked(self, x: torch.Tensor) -> tuple | None:
        """The tensors the value depends on, or None when ``x`` cannot be tracked (a Parameter other than the
        attached one): the sources (the attached parameter and the earlier parametrizations' tensors) or ``x``
        itself, then the parametrization's own parameters and buffers."""
        sources = self._sources
        if sources is None:
            sources = [x]
        elif isinstance(x, nn.Parameter) and x is not sources[0]:
            return None
        return (*sources, *self._parameters.values(), *self._buffers.values())

    @staticmethod
    def _fresh(cached: tuple | None, tracked: tuple | None, meta: tuple) -> bool:
        """Whether a cache entry ``(meta, ((tensor, version, data_ptr), ...), ...)`` is still valid."""
        if tracked is None or cached is None or cached[0] != meta or len(cached[1]) != len(tracked):
            return False
        for t, (ref, version, ptr) in zip(tracked, cached[1]):  # noqa: B905 - lengths checked
            if t is not ref or (t is not None and (t._version != version or t.data_ptr() != ptr)):
                return False
        return True

    @staticmethod
    def _refs(tracked: tuple) -> tuple:
        return tuple((t, None if t is None else t._version, None if t is None else t.data_ptr()) for t in tracked)

    def cached_value(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`quantized_value` of ``x``, from the cache while nothing it depends on changed."""
        tracked = self._tracked(x)
        meta = self._cache_meta(x)
        cached = self._cache
        if cached is not None and cached[2]._version == cached[3] and self._fresh(cached, tracked, meta):
            return cached[2]
        if type(self).quantized_value is WeightParametrization.quantized_value:  # value = export, dequantized
            with torch.no_grad():
                qt = self.export_quantized(x)
                value = qt.dequantize()
            if tracked is not None:
                self._export_cache = (meta, self._refs(tracked), qt, _versions(qt))
        else:
            value = self.quantized_value(x)
        self.computations += 1
        self._cache = None if tracked is None else (meta, self._refs(tracked), value, value._version)
        return value

    def cached_export(self, x: torch.Tensor) -> QuantizedTensor:
        """:meth:`export_quantized` of ``x`` (the tensor this parametrization sees), from a cache while nothing it
        depends on changed (the tracking of :meth:`cached_value`; a write into the returned tensors is seen too).
        ``learnq.save`` reads it: saving a model again, or after an eval forward, does not quantize again."""
        tracked = self._tracked(x)
        meta = self._cache_meta(x)
        cached = self._export_cache
        if cached is not None and cached[3] == _versions(cached[2]) and self._fresh(cached, tracked, meta):
            return cached[2]
        qt = self.export_quantized(x)
        self._export_cache = None if tracked is None else (meta, self._refs(tracked), qt, _versions(qt))
        return qt

    def invalidate(self) -> None:
        """Drop the cached tensor (recomputed at the next forward) and the cached export."""
        self._cache = None
        self._export_cache = None

    def __getstate__(self) -> dict:  # copies (deepcopy, pickle) start without the cache
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_cache"] = None
        state["_export_cache"] = None
        return state

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cached_value(x)
        if self.straight_through and torch.is_grad_enabled() and x.requires_grad:
            return ste(x, y)
        return y

    # -- inputs -------------------------------------------------------------------------------------------------
    def current_input(self) -> torch.Tensor:
        """What this parametrization sees now: the original parameter through the parametrizations before it."""
        if self._sources is None:
            raise ConfigError(f"{type(self).__name__} is not attached by learnq.prepare; pass the tensor")
        x = self._sources[0]
        for p in self._pre:
            x = p(x)
        return x

    def _input(self, x: torch.Tensor | None) -> torch.Tensor:
        if x is not None:
            return x
        with torch.no_grad():
            return self.current_input()


class LeanParametrizationList(parametrize.ParametrizationList):
    """torch's ``ParametrizationList`` with a leaner forward for a single tensor: the same parametrizations called
    in the same order through their ``__call__`` (hooks included) on ``original``, without the per-access
    ``ModuleList`` indexing and the ``hasattr`` probe that ends torch's loop by raising and catching an
    AttributeError. Every access of a parametrized weight (each forward of each layer) runs it."""

    def forward(self) -> torch.Tensor:
        if not self.is_tensor:
            return super().forward()
        x = self._parameters.get("original")
        if x is None:
            x = self._buffers["original"]
        for module in self._modules.values():
            x = module(x)
        return x


def register(module: nn.Module, name: str, parametrization: nn.Module, *, unsafe: bool = True) -> None:
    """``torch.nn.utils.parametrize.register_parametrization`` (learnq's one way to attach a parametrization), with
    the list made a :class:`LeanParametrizationList` (same values, less Python per weight access)."""
    parametrize.register_parametrization(module, name, parametrization, unsafe=unsafe)
    plist = module.parametrizations[name]  # type: ignore[index]
    if type(plist) is parametrize.ParametrizationList:
        plist.__class__ = LeanParametrizationList


def _versions(qt: QuantizedTensor) -> tuple:
    """The in-place versions of a quantized tensor's tensors (a cached export written into is computed again)."""
    return tuple(None if t is None else t._version
                 for t in (qt.codes, qt.scale, qt.offset, qt.group_bits, qt.value_range, qt.palette))


__all__ = ["LeanParametrizationList", "WeightParametrization", "register"]
