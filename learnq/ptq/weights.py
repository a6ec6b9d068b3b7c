"""Weight-only post-training quantization with a given grid (min-max range, or a clipping rule).

The simplest PTQ: each selected weight is quantized on ``spec``'s grid over its min-max range (per tensor, per
channel or per group) and replaced in the model by a frozen :class:`learnq.quantized.QuantizedWeight`. Clipping
methods (learnq.clipping) pass a ``clip`` function that picks the range instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from learnq.attach import BitsRule, Selection, select_weights
from learnq.grid import GridSpec, QuantizedTensor, quantize_tensor
from learnq.quantized import attach_quantized, get_module, split_name

ClipFn = Callable[[torch.Tensor, GridSpec], torch.Tensor]


def quantize_weights(model: nn.Module, spec: GridSpec, *, selection: Selection = Selection(),
                     bits: BitsRule | None = None, clip: ClipFn | None = None,
                     method: str = "minmax") -> dict[str, QuantizedTensor]:
    """Quantize the selected weights of ``model`` in place; returns ``{name: QuantizedTensor}``.

    bits: optional per-name bit-widths (default ``spec.bits``). clip: ``fn(weight, spec) -> α per group``. A tied
    weight is quantized once, under its first selected name, for every module holding it
    (:func:`learnq.attach.select_weights`).
    """
    out: dict[str, QuantizedTensor] = {}
    for name in select_weights(model, selection)[0]:
        module_name, param = split_name(name)
        weight = getattr(get_module(model, module_name), param).detach()
        layer_spec = spec if bits is None else GridSpec(
            bits=bits(name), scheme=spec.scheme, granularity=spec.granularity, rounding=spec.rounding,
            restricted=spec.restricted)
        alpha = None if clip is None else clip(weight, layer_spec)
        qt = quantize_tensor(weight, layer_spec, clip=alpha, method=method, name=name)
        attach_quantized(model, name, qt)
        out[name] = qt
    return out
