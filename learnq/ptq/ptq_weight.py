"""The PTQ weight quantizer: a parametrization with a settable clipping value α per group (LAPQ seeds/001 §4,
Algorithm 1; METHODS.md §0 grids, §2 bias correction).

``PTQWeight(spec, alpha)`` registered on a layer's weight with ``torch.nn.utils.parametrize`` makes the layer
compute with ŵ = Q_α(w) on ``spec``'s grid, optionally bias-corrected per output channel
(:mod:`learnq.ptq.bias_correction`). Loss-aware methods (LAPQ's Powell search) change α thousands of times, so the
fake-quantized weight is cached and recomputed only when α or w changed (the one cache of
:class:`learnq.parametrization.WeightParametrization`: identity, in-place writes and storage of w and of the
``alpha`` buffer). ``alpha=None`` quantizes on the min-max range of each group (any scheme, affine included):
:func:`quantize_weights`, the weight-only min-max PTQ, is that quantizer frozen into each layer.

``forward(w)`` is bit-identical to ``export_quantized(w).dequantize()`` (it *is* that value), so the model file
written by ``learnq.save`` computes exactly what the model computed. Bias correction per channel is the affine map
ŵ_c ← r_c·ŵ_c + t_c, stored exactly as a per-output-channel step r_c·Δ and offset r_c·o + t_c: a per-tensor grid
with bias correction is exported with ``axis:0`` granularity (same codes, one step and offset per channel).
No gradient flows to the weight (PTQ freezes weights; training-time quantizers live in learnq.quantizers).
The PTQ methods (:mod:`learnq.ptq.registry`) attach it through ``PTQContext.attach_weights``.
"""

from __future__ import annotations

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
from learnq.parametrization import WeightParametrization, register
from learnq.ptq.bias_correction import correction_terms
from learnq.quantized import attach_quantized, get_module, holders, split_name

ClipRule = str | Callable[[torch.Tensor, GridSpec], torch.Tensor]


class PTQWeight(WeightParametrization):
    """Fake-quantizes a weight on ``spec``'s grid clipped at ``alpha`` (one value per group of the granularity), or on
    each group's min-max range when ``alpha`` is None.

    bias_correction: per-output-channel mean correction after quantization; variance_correction: the variance step
    before it (implies bias correction). method: the name recorded in the model file.
    """

    def __init__(self, spec: GridSpec, alpha: torch.Tensor | float | None, *, bias_correction: bool = False,
                 variance_correction: bool = False, method: str = "minmax") -> None:
        super().__init__()
        if not isinstance(spec, GridSpec):
            raise ConfigError(f"spec must be a learnq.grid.GridSpec, got {type(spec).__name__}")
        if spec.scheme == "affine" and alpha is not None:
            raise ConfigError("PTQWeight needs a grid with one clipping value α (scheme 'symmetric', 'lapq' or "
                              "'unsigned'); the affine grid has two ends (alpha=None: its min-max range)")
        self.bias_correction = bool(bias_correction or variance_correction)
        self.variance_correction = bool(variance_correction)
        if self.bias_correction and not (spec.granularity.kind == "tensor"
                                         or (spec.granularity.kind == "axis" and spec.granularity.axis == 0)):
            raise ConfigError(f"bias correction works per output channel: use granularity 'tensor' or 'channel' "
                              f"with it, not {spec.granularity}")
        self.spec = spec
        self.method = str(method)
        a = None
        if alpha is not None:
            a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1).clone()
            self._check_alpha(a)
        self.register_buffer("alpha", a)

    # -- α -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_alpha(a: torch.Tensor) -> None:
        if a.numel() == 0 or not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
            raise QuantizationError(f"α must be finite and >= 0 for every group, got {a.tolist()[:8]}")

    def set_alpha(self, alpha: torch.Tensor | float) -> None:
        """Set α (a scalar, or one value per group) and invalidate the cached quantized weight."""
        if self.alpha is None:
            raise ConfigError("this weight quantizer uses each group's min-max range (alpha=None); build it with an "
                              "α to set one")
        a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1).to(self.alpha.device)
        if a.numel() == 1:
            a = a.expand(self.alpha.numel())
        if a.numel() != self.alpha.numel():
            raise ConfigError(f"α has {a.numel()} values but this weight quantizer has {self.alpha.numel()} groups")
        self._check_alpha(a)
        with torch.no_grad():
            self.alpha.copy_(a)
        self.invalidate()

    # -- quantization --------------------------------------------------------------------------------------------
    def export_quantized(self, w: torch.Tensor | None = None) -> QuantizedTensor:
        """The quantized weight as the model file stores it (codes, per-group step and offset)."""
        w = self._input(w).detach()
        spec = self.spec
        alpha = None
        if self.alpha is not None:
            n = spec.granularity.num_groups(tuple(w.shape))
            if n != self.alpha.numel():
                raise ConfigError(f"this weight quantizer has {self.alpha.numel()} α values but a weight of shape "
                                  f"{tuple(w.shape)} has {n} groups with granularity {spec.granularity}")
            alpha = self.alpha.to(w.device)
            rows = spec.granularity.view(w.float())
            constant = rows.min(dim=1).values == rows.max(dim=1).values
            if bool(((alpha == 0) & ~constant).any()):
                bad = torch.nonzero((alpha == 0) & ~constant).reshape(-1).tolist()[:8]
                raise QuantizationError(f"α is 0 for group(s) {bad} whose values are not all equal; α must be > 0")
        params = compute_params(w, spec, clip=alpha, name=self.name or "tensor")
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

    def extra_repr(self) -> str:
        bc = ", variance+mean bias correction" if self.variance_correction else (
            ", bias correction" if self.bias_correction else "")
        return (f"bits={self.spec.bits}, scheme={self.spec.scheme}, granularity={self.spec.granularity}, "
                f"method={self.method}{bc}")


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
        q = PTQWeight(layer_spec, alpha, bias_correction=bias_correction,
                      variance_correction=variance_correction, method=label).to(w.device)
        q.name = name
        for _, hmod, hattr in holders(model, name):
            register(hmod, hattr, q)
        out[name] = q
    return out


def _per_group(alpha: torch.Tensor | float, spec: GridSpec, w: torch.Tensor) -> torch.Tensor:
    """α as one value per group of ``w`` (a single value is every group's)."""
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1)
    return a.expand(spec.granularity.num_groups(tuple(w.shape))) if a.numel() == 1 else a


def quantize_weights(model: nn.Module, spec: GridSpec, *, selection: Selection = Selection(),
                     bits: BitsRule | Callable[[str], int] | None = None,
                     clip: Callable[[torch.Tensor, GridSpec], torch.Tensor] | None = None,
                     method: str = "minmax") -> dict[str, QuantizedTensor]:
    """Weight-only PTQ with a given grid: each selected weight quantized on ``spec``'s grid over its min-max range
    per group (or clipped at ``clip(w, spec)``) by a :class:`PTQWeight`, and frozen into the model
    (:func:`learnq.quantized.attach_quantized`, any parametrization on it removed). Returns ``{name: tensor}``.

    bits: optional per-name bit-widths (default ``spec.bits``). A tied weight is quantized once, under its first
    selected name, for every module holding it (:func:`learnq.attach.select_weights`).
    """
    out: dict[str, QuantizedTensor] = {}
    for name in select_weights(model, selection)[0]:
        module_name, param = split_name(name)
        with torch.no_grad():
            w = getattr(get_module(model, module_name), param).detach()
        layer_spec = spec if bits is None else replace(spec, bits=bits(name))
        alpha = None if clip is None else _per_group(clip(w, layer_spec), layer_spec, w)
        q = PTQWeight(layer_spec, alpha, method=method)
        q.name = name
        qt = q.export_quantized(w)
        attach_quantized(model, name, qt)
        out[name] = qt
    return out


__all__ = ["PTQWeight", "attach_weight_quantizers", "ptq_weight_of", "quantize_weights"]
