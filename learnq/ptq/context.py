"""What a post-training quantization method is and what it gets (LAPQ seeds/001 §5; METHODS.md §2 and §6).

A PTQ method is a :class:`PTQMethod`: a name, a one-line description, a function ``fn(ctx: PTQContext) -> dict |
None`` and the defaults of its own options. The function quantizes ``ctx.model`` in place, typically with
``ctx.attach_weights(clip=...)`` (a :class:`learnq.ptq.ptq_weight.PTQWeight` per selected weight, or its own
parametrization exporting a QuantizedTensor) and ``ctx.attach_activations(clip=...)`` (an
:class:`learnq.act.ActQuantizer` at the input of each selected layer, calibrated). It counts loss evaluations in
``ctx.loss_evals``; what it returns is merged into ``PTQResult.extra`` (a ``"layers"`` list there replaces the
per-layer report). A new method is one module defining ``METHOD = PTQMethod(...)`` plus one entry in the registry
tuple of :mod:`learnq.ptq.registry` (docs/architecture.md shows one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from learnq.act import ActQuantizer, attach_input_quantizers, calibrate
from learnq.attach import Selection
from learnq.grid import GridSpec
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers
from learnq.quantized import get_module, split_name

PTQFn = Callable[["PTQContext"], "dict[str, Any] | None"]


@dataclass(frozen=True)
class PTQMethod:
    """A registered PTQ method: one-line description, function, option defaults (the type of each default is the
    type a caller must give; None: any), and whether it leaves the first and last layers in float by default."""

    name: str
    description: str
    fn: PTQFn
    options: Mapping[str, Any] = field(default_factory=dict)
    skip_first_last: bool = False
    quick: Mapping[str, Any] = field(default_factory=dict)
    """Options for a fast smoke run (the registry round-trip tests, benchmarks' ``--quick``)."""


@dataclass
class PTQContext:
    """Everything a method needs; it quantizes ``model`` in place.

    inputs / targets: the calibration set (CPU tensors, targets None when the data had none). wspec: the weight
    grid (None when weights stay in float); abits: activation bits (None: float). selection: the layers to quantize
    (weights and activation inputs alike), with the unquantizable subtrees excluded.
    """

    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor | None
    wspec: GridSpec | None
    abits: int | None
    selection: Selection
    bias_correction: bool
    variance_correction: bool
    act_per_channel: bool
    device: str
    seed: int
    progress: bool
    options: dict[str, Any]
    method: str = "minmax"
    batch_size: int = 256
    loss_evals: int = 0
    weights: dict[str, nn.Module] = field(default_factory=dict)
    activations: dict[str, ActQuantizer] = field(default_factory=dict)
    config: Any = None  # the learnq.ptq.PTQ config being applied
    bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """``{layer: (mean, std)}`` per output channel of the layer's pre-activation, from the BatchNorm folded into it
    (:func:`learnq.bn_fold.bn_statistics`), kept true by cross-layer equalization (data-free methods read it)."""
    act_clip: tuple[str, dict[str, Any]] = ("minmax", {})
    """The clipping rule (and its options) the method asked :meth:`attach_activations` for: the integer target
    (``PTQ.target``, which quantizes activations itself) applies it to its activation ranges."""

    def attach_weights(self, clip: Any = "minmax", **clip_options: Any) -> dict[str, PTQWeight]:
        """PTQWeight on every selected weight, α by clipping rule ``clip`` (nothing when weights stay in float)."""
        if self.wspec is None:
            return {}
        qs = attach_weight_quantizers(self.model, self.wspec, selection=self.selection, clip=clip,
                                      bias_correction=self.bias_correction,
                                      variance_correction=self.variance_correction,
                                      method=self.method, **clip_options)
        self.weights.update(qs)
        return qs

    def record_weights(self, names: Iterable[str]) -> None:
        """Record the quantized weights a method attached itself (``attach_quantized``, a reconstruction): the last
        parametrization of each named parameter goes into :attr:`weights`."""
        for name in names:
            module_name, param = split_name(name)
            self.weights[name] = get_module(self.model, module_name).parametrizations[param][-1]

    def attach_activations(self, clip: str = "minmax", *, finish: bool = True, observe: bool = True,
                           **clip_options: Any) -> dict[str, ActQuantizer]:
        """ActQuantizer at the input of every selected layer, observed over the calibration set (the model as it
        is now, e.g. with quantized weights); with ``finish`` α is chosen by ``clip`` and quantization enabled.
        ``observe=False``: attached only (pass-through until finished), for a method that feeds each quantizer's
        ``observe`` itself with the inputs a calibration pass would show it, then calls
        :meth:`finish_activations`."""
        self.act_clip = (clip, dict(clip_options))
        if self.abits is None:
            return {}
        qs = attach_input_quantizers(self.model, self.abits, selection=self.selection,
                                     per_channel=self.act_per_channel, seed=self.seed)
        if not observe:
            return qs
        calibrate(self.model, self.inputs, device=self.device, batch_size=self.batch_size)
        if finish:
            self.finish_activations(qs, clip, **clip_options)
        else:
            self.activations.update(qs)
        return qs

    def finish_activations(self, quantizers: dict[str, ActQuantizer], clip: str = "minmax",
                           **clip_options: Any) -> None:
        """Choose α of every quantizer by ``clip`` from what it observed, enable it and record it in
        ``activations``."""
        self.act_clip = (clip, dict(clip_options))
        for q in quantizers.values():
            q.finish_calibration(clip, **clip_options)
        self.activations.update(quantizers)


__all__ = ["PTQContext", "PTQFn", "PTQMethod"]
