"""Activation quantizers for post-training quantization, placed at the input of each quantized conv/linear layer
(LAPQ seeds/001 §3 Eq. 3 and §5.1; METHODS.md §0 "Unsigned", §2).

An :class:`ActQuantizer` is registered as ``layer.input_quantizer`` (a submodule, so it moves, copies and saves with
the model) and applied by a forward pre-hook on the layer; the layer's weight and its state-dict keys are unchanged.
It has two switches:

* ``observing``: the forward pass records statistics of what goes through (running min and max, per tensor or per
  channel, :func:`learnq.act.observer.update_range`, and a bounded uniform random sample of the values for the Lp,
  KL and ACIQ rules: each value gets a seeded random key and the ``sample_size`` smallest keys are kept, so the
  sample is the same for the same data and seed);
* ``enabled``: the forward pass fake-quantizes its input on the unsigned grid [0, α] (Δ = α/(2^b-1)) when
  ``signed`` is False, else on the symmetric grid [-α, α] (Δ = α/(2^(b-1)-1), codes -2^(b-1)..2^(b-1)-1; the sign
  grid {-α, α} at 1 bit). ``signed=None`` (the default) decides from the calibration data: an input that is
  non-negative on the whole calibration set (after ReLU/ReLU6, pooling of those...) gets the unsigned grid.

``calibrate`` runs the observers over a calibration set; ``finish_calibration`` (per quantizer) picks α with a
clipping rule of :mod:`learnq.clipping`. The forward, its straight-through gradient (identity) and the export are the
family's (:mod:`learnq.act.base`); the model file records the quantizers through :mod:`learnq.act.state`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn.modules import module as _module_globals  # torch's global hook registries (read per forward)

from learnq.act.base import ActGrid, ActivationQuantizer
from learnq.act.observer import keep_sample, update_range
from learnq.attach import Selection, candidate_layers, select_parameters
from learnq.batches import calibration_batches
from learnq.errors import ConfigError, DataError, ModelError, QuantizationError
from learnq.grid import GridSpec, check_bits
from learnq.layers import LAYER_TYPES

ATTR = "input_quantizer"


class ActQuantizer(ActivationQuantizer):
    """Observer and fake quantizer of one layer input. ``alpha`` is a buffer: a scalar, or one value per channel
    (``per_channel=True``, along ``channel_axis`` of the input, 1 for (N, C, ...) tensors)."""

    method = "input"

    def __init__(self, bits: int, *, signed: bool | None = None, per_channel: bool = False, channel_axis: int = 1,
                 sample_size: int = 32768, seed: int = 0) -> None:
        super().__init__()
        self.bits = check_bits(bits, "activation bits")
        if signed is not None and not isinstance(signed, bool):
            raise ConfigError(f"signed must be True, False or None (decide from the data), got {signed!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ConfigError(f"sample_size must be an integer >= 1, got {sample_size!r}")
        self.signed = signed
        self.per_channel = bool(per_channel)
        self.channel_axis = int(channel_axis)
        self.sample_size = sample_size
        self.seed = int(seed)
        self.enabled = False
        self.observing = False
        self.calibrated = False
        self.register_buffer("alpha", torch.zeros(()))
        self.reset_stats()

    # -- observing -----------------------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Forget what was observed."""
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.sample: torch.Tensor | None = None  # (rows, <= sample_size) float32, on the CPU
        self._keys: torch.Tensor | None = None
        self.batches = 0
        self.count = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, n): one row (per tensor) or one row per channel."""
        if not self.per_channel:
            return x.reshape(1, -1)
        if x.ndim < 2 or not -x.ndim <= self.channel_axis < x.ndim:
            raise ModelError(f"a per-channel activation quantizer needs inputs with a channel axis "
                             f"{self.channel_axis}, got shape {tuple(x.shape)}")
        return x.movedim(self.channel_axis, 0).reshape(x.shape[self.channel_axis], -1)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add ``x`` to the statistics."""
        rows = self._rows(x.detach().float())
        lo, hi = torch.aminmax(rows, dim=1)  # one pass: the same values as min and max
        if self.min_val is not None and self.min_val.shape != lo.shape:
            raise ModelError(f"the input of this quantizer had {self.min_val.numel()} channels, now {lo.numel()}")
        self.min_val, self.max_val = update_range(self.min_val, self.max_val, lo, hi,  # type: ignore[arg-type]
                                                  first=self.min_val is None)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
        self._keys, self.sample = keep_sample(self._keys, self.sample, rows, self.sample_size, g)
        self.batches += 1
        self.count += rows.shape[1]

    # -- calibration result ----------------------------------------------------------------------------------------
    def grid_spec(self) -> GridSpec:
        """The grid the quantizer uses (``unsigned`` or ``symmetric``; per channel = axis 0 of the sample rows)."""
        if self.signed is None:
            raise QuantizationError("this activation quantizer has not decided signed/unsigned: calibrate it first")
        return GridSpec(bits=self.bits, scheme="symmetric" if self.signed else "unsigned",
                        granularity="channel" if self.per_channel else "tensor")

    def finish_calibration(self, method: str = "minmax", **options: object) -> torch.Tensor:
        """Decide signed/unsigned from the observed minimum (unless fixed), choose α with clipping ``method`` on the
        observed values, enable quantization and stop observing. Returns α."""
        from learnq.clipping import choose_clip  # here: ``import learnq`` does not load the clipping rules

        if self.min_val is None or self.sample is None:
            raise DataError("this activation quantizer observed no data; run calibrate() over a calibration set")
        if self.signed is None:
            self.signed = bool((self.min_val < 0).any())
        spec = self.grid_spec()
        if method == "minmax" and not options:
            alpha = torch.maximum(self.max_val.abs(), self.min_val.abs()) if self.signed else self.max_val.clamp(min=0)
        else:
            alpha = choose_clip(self.sample, spec, method, **options)
        self.set_alpha(alpha.float().cpu())
        self.observing = False
        self.enabled = True
        return self.alpha.detach().clone()

    def set_alpha(self, alpha: torch.Tensor | float) -> None:
        """Set α (scalar, or one value per channel for a per-channel quantizer); marks the quantizer calibrated."""
        a = torch.as_tensor(alpha, dtype=torch.float32).detach()
        if not self.per_channel:
            if a.numel() != 1:
                raise ConfigError(f"a per-tensor activation quantizer takes one α, got {a.numel()} values")
            a = a.reshape(())
        else:
            a = a.reshape(-1)
        if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
            raise QuantizationError(f"activation α must be finite and >= 0, got {a.reshape(-1).tolist()[:8]}")
        self.alpha = a.to(self.alpha.device)
        self.calibrated = True

    # -- forward ---------------------------------------------------------------------------------------------------
    def _scale_offset(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        a = self.alpha
        if not self.signed:
            return a / (2**self.bits - 1), torch.zeros_like(a), 0, 2**self.bits - 1
        if self.bits == 1:
            return 2 * a, -a, 0, 1
        top = 2 ** (self.bits - 1) - 1
        return a / top, torch.zeros_like(a), -top - 1, top

    def grid(self) -> ActGrid:
        if not self.calibrated or self.signed is None:
            raise QuantizationError("this activation quantizer is enabled but has no α: calibrate it first")
        scale, offset, qmin, qmax = self._scale_offset()
        return ActGrid(scale=scale, offset=offset, zero_point=torch.zeros_like(scale), qmin=qmin, qmax=qmax,
                       channel_axis=self.channel_axis if self.per_channel else None)

    def before(self, x: torch.Tensor) -> None:
        if self.observing:
            self.observe(x)

    def active(self) -> bool:
        return self.enabled

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else ("unsigned" if self.signed is False else "auto")
        return (f"bits={self.bits}, {kind}, {'per-channel' if self.per_channel else 'per-tensor'}, "
                f"enabled={self.enabled}, observing={self.observing}")


def _input_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer's first input goes through ``module.input_quantizer``. Without gradients (and
    without hooks on the quantizer) straight to its :meth:`~ActivationQuantizer.quantize_eval`, skipping the module
    call machinery: this runs once per quantized layer per forward. A later positional argument that is the same
    tensor (``nn.MultiheadAttention`` called as ``mha(x, x, x)``: query, key and value) gets the same quantized
    tensor."""
    if not args:
        return args
    q = module._modules[ATTR]
    x = args[0]
    if not torch.is_grad_enabled() and not (q._forward_pre_hooks or q._forward_hooks or _global_hooks()):
        y = q.quantize_eval(x)
    else:
        y = q(x)
    if len(args) == 1:
        return (y,)
    return (y,) + tuple(y if a is x else a for a in args[1:])


def _global_hooks() -> bool:
    return bool(_module_globals._global_forward_pre_hooks or _module_globals._global_forward_hooks)


def _float_input_layers(model: nn.Module) -> list[str]:
    """Layers whose input no pre-hook can reach: the ``out_proj`` of ``nn.MultiheadAttention``, whose weight the
    attention reads directly (its input, the attention's output, stays float)."""
    return [f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)]


def attach_input_quantizers(model: nn.Module, bits: int, *, selection: Selection = Selection(),
                            per_channel: bool = False, signed: bool | None = None, sample_size: int = 32768,
                            seed: int = 0) -> dict[str, ActQuantizer]:
    """Put an :class:`ActQuantizer` at the input of every selected conv/linear/attention layer (in place); returns
    ``{layer name: quantizer}``. The layers are those whose weight ``selection`` selects (types, include/exclude
    globs on ``<layer>.weight``, first/last, depthwise); embeddings (integer inputs) and the ``out_proj`` of an
    ``nn.MultiheadAttention`` (called inside the attention, no hook reaches its input) get none. Per channel means
    along axis 1 for convolutions (N, C, ...) and along the last axis for linear and attention layers (..., C),
    the features of each token. A layer that already has one keeps it (returned as is)."""
    check_bits(bits, "activation bits")
    chosen = {n.rpartition(".")[0] for n in select_parameters(model, replace(selection, biases=False), require=False)}
    kinds = LAYER_TYPES["conv"] + LAYER_TYPES["linear"] + LAYER_TYPES["attention"]  # float inputs (not embeddings)
    unreachable = set(_float_input_layers(model))
    layers = [(name, layer) for name, layer in candidate_layers(model, selection)
              if name in chosen and isinstance(layer, kinds) and name not in unreachable]
    if not layers:
        raise ModelError(f"{type(model).__name__} has no layer matching the selection (types "
                         f"{list(selection.types)}) to put activation quantizers in front of")
    out: dict[str, ActQuantizer] = {}
    for i, (name, layer) in enumerate(layers):
        existing = getattr(layer, ATTR, None)
        if isinstance(existing, ActQuantizer):
            out[name] = existing
            continue
        if existing is not None:
            raise ModelError(f"layer {name!r} already has an attribute {ATTR!r}; learnq cannot attach its own")
        axis = 1 if isinstance(layer, LAYER_TYPES["conv"]) else -1  # conv: (N, C, ...); linear, attention: (..., C)
        q = ActQuantizer(bits, signed=signed, per_channel=per_channel, channel_axis=axis, sample_size=sample_size,
                         seed=seed + i)
        layer.add_module(ATTR, q)
        layer.register_forward_pre_hook(_input_hook)
        out[name] = q
    return out


def input_quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    """``{layer name: ActQuantizer}`` of every layer with an input quantizer, in model order."""
    return {name: m._modules[ATTR] for name, m in model.named_modules()  # _modules: no AttributeError per module
            if isinstance(m._modules.get(ATTR), ActQuantizer)}


def remove_input_quantizers(model: nn.Module) -> int:
    """Undo :func:`attach_input_quantizers` (submodules and hooks); returns how many were removed."""
    removed = 0
    layers = [m for _, m in model.named_modules() if isinstance(getattr(m, ATTR, None), ActQuantizer)]
    for layer in layers:
        for hid, fn in list(layer._forward_pre_hooks.items()):
            if fn is _input_hook:
                del layer._forward_pre_hooks[hid]
                layer._forward_pre_hooks_with_kwargs.pop(hid, None)
                getattr(layer, "_forward_pre_hooks_always_called", {}).pop(hid, None)
        del layer._modules[ATTR]
        removed += 1
    return removed


@torch.no_grad()
def calibrate(model: nn.Module, calib_data: object, *, device: str | torch.device = "cpu",
              batch_size: int = 256) -> None:
    """Run every input quantizer's observer over the calibration set (model in eval mode, quantizers of the layers
    observed as they are: enabled ones keep quantizing). Statistics accumulate over calls; reset with
    ``q.reset_stats()``."""
    quantizers = input_quantizers(model)
    if not quantizers:
        raise ModelError("the model has no activation quantizers; call attach_input_quantizers first")
    was_training = model.training
    model.eval()
    model.to(device)
    for q in quantizers.values():
        q.observing = True
    try:
        for x, _ in calibration_batches(calib_data, batch_size):
            model(x.to(device))
    finally:
        for q in quantizers.values():
            q.observing = False
        model.train(was_training)


__all__ = ["ATTR", "ActQuantizer", "attach_input_quantizers", "calibrate", "input_quantizers",
           "remove_input_quantizers"]
