"""The PTQ weight quantizer: a parametrization with a settable clipping value α per group (LAPQ seeds/001 §4,
Algorithm 1; METHODS.md §0 grids, §2 bias correction).

``PTQWeight(spec, alpha)`` registered on a layer's weight with ``torch.nn.utils.parametrize`` makes the layer
compute with ŵ = Q_α(w) on ``spec``'s grid, optionally bias-corrected per output channel
(:mod:`learnq.ptq.bias_correction`). Loss-aware methods (LAPQ's Powell search) change α thousands of times, so the
fake-quantized weight is cached and recomputed only when α or w changed (α through :meth:`PTQWeight.set_alpha` or
an in-place change of the ``alpha`` buffer; w by identity, device, shape or an in-place change, as tracked by
torch's version counter; a change made through ``tensor.data`` is not seen: call :meth:`PTQWeight.invalidate`).

``forward(w)`` is bit-identical to ``export_quantized(w).dequantize()`` (it *is* that value), so the model file
written by ``learnq.save`` computes exactly what the model computed. Bias correction per channel is the affine map
ŵ_c ← r_c·ŵ_c + t_c, stored exactly as a per-output-channel step r_c·Δ and offset r_c·o + t_c: a per-tensor grid
with bias correction is exported with ``axis:0`` granularity (same codes, one step and offset per channel).
No gradient flows to the weight (PTQ freezes weights; training-time quantizers live in learnq.quantizers).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.attach import BitsRule, Selection, select_weights
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError, QuantizationError
from learnq.granularity import CHANNEL
from learnq.grid import FLOAT_BITS, GridSpec, QuantizedTensor, compute_params, quantize
from learnq.ptq.bias_correction import correction_terms
from learnq.quantized import get_module, holders, split_name

ClipRule = str | Callable[[torch.Tensor, GridSpec], torch.Tensor]


class PTQWeight(nn.Module):
    """Fake-quantizes a weight on ``spec``'s grid clipped at ``alpha`` (one value per group of the granularity).

    bias_correction: per-output-channel mean correction after quantization; variance_correction: the variance step
    before it (implies bias correction). method: the name recorded in the model file.
    """

    def __init__(self, spec: GridSpec, alpha: torch.Tensor, *, bias_correction: bool = False,
                 variance_correction: bool = False, method: str = "minmax") -> None:
        super().__init__()
        if not isinstance(spec, GridSpec):
            raise ConfigError(f"spec must be a learnq.grid.GridSpec, got {type(spec).__name__}")
        if spec.scheme == "affine":
            raise ConfigError("PTQWeight needs a grid with one clipping value α (scheme 'symmetric', 'lapq' or "
                              "'unsigned'); the affine grid has two ends")
        self.bias_correction = bool(bias_correction or variance_correction)
        self.variance_correction = bool(variance_correction)
        if self.bias_correction and not (spec.granularity.kind == "tensor"
                                         or (spec.granularity.kind == "axis" and spec.granularity.axis == 0)):
            raise ConfigError(f"bias correction works per output channel: use granularity 'tensor' or 'channel' "
                              f"with it, not {spec.granularity}")
        self.spec = spec
        self.method = str(method)
        a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1).clone()
        self._check_alpha(a)
        self.register_buffer("alpha", a)
        self._key: tuple | None = None
        self._cached: torch.Tensor | None = None
        self.computations = 0  # how many times the quantized weight was recomputed (cache misses)

    # -- α -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_alpha(a: torch.Tensor) -> None:
        if a.numel() == 0 or not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
            raise QuantizationError(f"α must be finite and >= 0 for every group, got {a.tolist()[:8]}")

    def set_alpha(self, alpha: torch.Tensor | float) -> None:
        """Set α (a scalar, or one value per group) and invalidate the cached quantized weight."""
        a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1).to(self.alpha.device)
        if a.numel() == 1:
            a = a.expand(self.alpha.numel())
        if a.numel() != self.alpha.numel():
            raise ConfigError(f"α has {a.numel()} values but this weight quantizer has {self.alpha.numel()} groups")
        self._check_alpha(a)
        with torch.no_grad():
            self.alpha.copy_(a)
        self.invalidate()

    def invalidate(self) -> None:
        """Drop the cached quantized weight (recomputed at the next forward)."""
        self._key = None
        self._cached = None

    # -- quantization --------------------------------------------------------------------------------------------
    def export_quantized(self, w: torch.Tensor) -> QuantizedTensor:
        """The quantized weight as the model file stores it (codes, per-group step and offset)."""
        spec = self.spec
        n = spec.granularity.num_groups(tuple(w.shape))
        if n != self.alpha.numel():
            raise ConfigError(f"this weight quantizer has {self.alpha.numel()} α values but a weight of shape "
                              f"{tuple(w.shape)} has {n} groups with granularity {spec.granularity}")
        w = w.detach()
        alpha = self.alpha.to(w.device)
        rows = spec.granularity.view(w.float())
        constant = rows.min(dim=1).values == rows.max(dim=1).values
        if bool(((alpha == 0) & ~constant).any()):
            bad = torch.nonzero((alpha == 0) & ~constant).reshape(-1).tolist()[:8]
            raise QuantizationError(f"α is 0 for group(s) {bad} whose values are not all equal; α must be > 0")
        params = compute_params(w, spec, clip=alpha)
        codes = quantize(w, spec, params)
        qmin, _ = spec.qrange()
        extra: dict = {}
        granularity, scale, offset = spec.granularity, params.scale, params.offset
        if self.bias_correction:
            if w.ndim < 2:
                raise ConfigError(f"bias correction needs a weight with output channels (ndim >= 2), got shape "
                                  f"{tuple(w.shape)}")
            channels = w.shape[0]
            if granularity.kind == "tensor":
                scale, offset = scale.expand(channels), offset.expand(channels)
                granularity = CHANNEL
            w_hat = codes.float() * CHANNEL.expand(scale, w.shape) + CHANNEL.expand(offset, w.shape)
            r, t = correction_terms(w_hat, w, variance=self.variance_correction, axis=0)
            scale, offset = scale * r, offset * r + t
            extra["bias_correction"] = "variance+mean" if self.variance_correction else "mean"
        return QuantizedTensor(codes=codes, scale=scale.contiguous(), offset=offset.contiguous(),
                               granularity=granularity, bits=spec.bits, qmin=qmin, scheme=spec.scheme,
                               method=self.method, dtype=w.dtype, extra=extra)

    def _cache_key(self, w: torch.Tensor) -> tuple:
        return (w._version, tuple(w.shape), w.dtype, w.device, self.alpha._version, self.alpha.device)

    def _cache_valid(self, w: torch.Tensor, key: tuple) -> bool:
        if self._cached is None or self._key is None or key != self._key[2:]:
            return False
        return self._key[0]() is w and self._key[1]() is self.alpha

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        key = self._cache_key(w)
        if not self._cache_valid(w, key):
            with torch.no_grad():
                self._cached = self.export_quantized(w).dequantize()
            self._key = (weakref.ref(w), weakref.ref(self.alpha), *key)
            self.computations += 1
        return self._cached

    def extra_repr(self) -> str:
        bc = ", variance+mean bias correction" if self.variance_correction else (
            ", bias correction" if self.bias_correction else "")
        return (f"bits={self.spec.bits}, scheme={self.spec.scheme}, granularity={self.spec.granularity}, "
                f"method={self.method}{bc}")

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        state = dict(state)
        state["_key"] = None
        state["_cached"] = None
        return state


def _spec(spec_or_bits: GridSpec | int) -> GridSpec:
    if isinstance(spec_or_bits, GridSpec):
        return spec_or_bits
    if isinstance(spec_or_bits, bool) or not isinstance(spec_or_bits, int):
        raise ConfigError(f"spec_or_bits must be a GridSpec or a bit-width, got {spec_or_bits!r}")
    return GridSpec(bits=spec_or_bits, granularity=CHANNEL)  # the default weight grid: per output channel


def ptq_weight_of(module: nn.Module, param: str = "weight") -> PTQWeight | None:
    """The PTQWeight on ``module.param`` (the last parametrization), or None."""
    if not parametrize.is_parametrized(module, param):
        return None
    last = module.parametrizations[param][-1]  # type: ignore[index]
    return last if isinstance(last, PTQWeight) else None


def attach_weight_quantizers(model: nn.Module, spec_or_bits: GridSpec | int, *, selection: Selection = Selection(),
                             clip: ClipRule = "minmax", bits_rule: BitsRule | Callable[[str], int] | None = None,
                             bias_correction: bool = False, variance_correction: bool = False,
                             method: str | None = None, **clip_options: object) -> dict[str, PTQWeight]:
    """Attach a :class:`PTQWeight` to every selected weight of ``model`` (in place); returns ``{name: PTQWeight}``.

    spec_or_bits: the weight grid, or a bit-width for the default grid (symmetric, one step per output channel).

    clip: a clipping method of ``learnq.clipping.CLIP_METHODS`` (with ``clip_options``) or ``fn(w, spec) -> α``.
    bits_rule: per-name bits (``BitsRule``); a parameter given 32 bits is left in float and not returned.
    method: the name recorded in the model file (default: the clip method's name). A tied weight gets one
    PTQWeight registered on every module holding it, returned under its first selected name
    (:func:`learnq.attach.select_weights`; left in float when the selection leaves one of its holders in float).
    """
    spec = _spec(spec_or_bits)
    if not isinstance(clip, str) and not callable(clip):
        raise ConfigError(f"clip must be a clipping method name or a function, got {clip!r}")
    if not isinstance(clip, str) and clip_options:
        raise ConfigError(f"clipping options {sorted(clip_options)} only apply to a named clipping method")
    label = method or (clip if isinstance(clip, str) else getattr(clip, "__name__", "custom"))
    out: dict[str, PTQWeight] = {}
    for name in select_weights(model, selection)[0]:
        bits = spec.bits if bits_rule is None else bits_rule(name)
        if bits == FLOAT_BITS:
            continue
        layer_spec = spec if bits == spec.bits else replace(spec, bits=bits)
        module_name, param = split_name(name)
        module = get_module(model, module_name)
        if parametrize.is_parametrized(module, param) and hasattr(module.parametrizations[param][-1],
                                                                  "export_quantized"):
            raise ModelError(f"parameter {name!r} already carries a quantizer; attach PTQ weight quantizers to a "
                             "float model (or remove the existing one first)")
        with torch.no_grad():
            w = getattr(module, param).detach()
        alpha = choose_clip(w, layer_spec, clip, **clip_options) if isinstance(clip, str) else clip(w, layer_spec)
        q = PTQWeight(layer_spec, alpha, bias_correction=bias_correction, variance_correction=variance_correction,
                      method=label).to(w.device)
        for _, hmod, hattr in holders(model, name):
            parametrize.register_parametrization(hmod, hattr, q, unsafe=True)
        out[name] = q
    return out


__all__ = ["PTQWeight", "attach_weight_quantizers", "ptq_weight_of"]
