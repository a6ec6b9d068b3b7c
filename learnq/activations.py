"""Activation quantizers: PACT's learned clipping (Choi et al., "PACT: Parameterized Clipping Activation for
Quantized Neural Networks", 2018, Eq. 1-3; METHODS.md section 6) and an observer-based fake quantizer (running
min-max, as DiffQ §5 uses for activations and as PyTorch's FakeQuantize does).

PACT: ``y = clamp(x, 0, α)`` with a learnable clip ``α`` per layer, then ``k``-bit unsigned quantization
``y_q = round(y·(2^k-1)/α)·α/(2^k-1)`` with a straight-through gradient. Gradients (PACT Eq. 3):
``∂y_q/∂x = 1`` for ``0 <= x < α`` (0 elsewhere), ``∂y_q/∂α = 1`` for ``x >= α`` (0 elsewhere). PACT regularises α
with L2 (weight decay on it); α's initial value is 10 (the paper's) or 6 after a ReLU6. α must stay positive (at
α <= 0 the clip maps every input to α, and the grid's step α/(2^k-1) is no step at all): like LSQ's step, it is
projected onto ``[MIN_CLIP, ∞)`` before every training forward, and every forward (and the ONNX export) uses
``max(α, MIN_CLIP)``, so the state after the last optimizer step is as usable and saveable as any other.

Observer: in training mode it tracks an exponential moving average of each batch's min and max (the first batch
sets them), and fake-quantizes on the affine grid over ``[min(lo, 0), max(hi, 0)]`` (zero exactly representable);
in eval mode it uses the tracked range. Gradient: identity inside the range, zero outside.

:func:`insert_activation_quantizers` wraps every ``nn.ReLU`` / ``nn.ReLU6`` module (or the types given) as
``QuantizedActivation(act, quantizer)``. Activations applied as functions (``F.relu`` in ``forward``) cannot be
found this way; a module instance used at several places gets one shared quantizer.

Model files: :func:`wrapper_state` describes the wrapped activations of a model (name, activation type, method,
bits, the learned clip α or the observed range) as JSON; ``learnq.save`` stores it under the metadata key
:data:`WRAPPERS_KEY` (the quantizers' tensors are ordinary model tensors of the file) and ``learnq.load`` calls
:func:`restore_wrappers` to wrap the same activations of a freshly built model before loading its tensors, so the
reloaded model computes in eval mode exactly what the trained one did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from learnq.checks import check_float, check_int
from learnq.errors import ConfigError, ModelError, QuantizationError
from learnq.ste import ste

ACTIVATION_METHODS = ("pact", "observer")
WRAPPERS_KEY = "activation_wrappers"  # the model file's metadata key of wrapper_state (learnq.checkpoint)
WRAPPERS_VERSION = 1
MIN_CLIP = 1e-6  # PACT's α floor: positive, far below any useful activation range


class PACT(nn.Module):
    """PACT activation quantizer: learnable clip ``clip`` (α), ``bits``-bit unsigned grid on ``[0, α]``."""

    def __init__(self, bits: int = 4, init_clip: float = 10.0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.bits = check_int("PACT", "bits", bits, 1, 16)
        check_float("PACT", "init_clip", init_clip, strict=True)
        self.clip = nn.Parameter(torch.tensor(float(init_clip), device=device))

    def effective_clip(self) -> torch.Tensor:
        """``max(α, MIN_CLIP)``: the clip every forward uses (differentiable in α above the floor)."""
        return self.clip.clamp(min=MIN_CLIP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.clip.data.clamp_(min=MIN_CLIP)
        alpha = self.effective_clip().to(x.dtype)
        y = torch.where(x >= alpha, alpha, x.clamp(min=0))  # PACT Eq. 1; ∂y/∂α = 1 where x >= α
        with torch.no_grad():
            step = alpha.detach().clamp(min=torch.finfo(x.dtype).tiny) / (2**self.bits - 1)
            yq = torch.round(y.detach() / step) * step
        return ste(y, yq)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clip={float(self.clip.detach()):.4g}"


class ObserverFakeQuant(nn.Module):
    """Fake quantization on a running min-max range (EMA with ``momentum``), ``bits``-bit affine grid."""

    def __init__(self, bits: int = 8, momentum: float = 0.1, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.bits = check_int("ObserverFakeQuant", "bits", bits, 1, 16)
        self.momentum = check_float("ObserverFakeQuant", "momentum", momentum, strict=True)
        if self.momentum > 1:
            raise ConfigError(f"ObserverFakeQuant.momentum must be in (0, 1], got {momentum!r}")
        self.register_buffer("running_min", torch.zeros((), device=device))
        self.register_buffer("running_max", torch.zeros((), device=device))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=device))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        first = ~self.observed
        m = self.momentum
        self.running_min.copy_(torch.where(first, lo, (1 - m) * self.running_min + m * lo))
        self.running_max.copy_(torch.where(first, hi, (1 - m) * self.running_max + m * hi))
        self.observed.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x)
        elif not bool(self.observed):
            raise QuantizationError("ObserverFakeQuant has not observed any data: run the model in training mode on "
                                    "some batches (calibration) before evaluating it")
        lo = self.running_min.clamp(max=0).to(x.dtype)
        hi = self.running_max.clamp(min=0).to(x.dtype)
        levels = 2**self.bits - 1
        with torch.no_grad():
            scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
            zero = torch.round(-lo / scale)
            q = (torch.round(x.detach() / scale) + zero).clamp(0, levels)
            yq = (q - zero) * scale
        return ste(torch.clamp(x, min=lo, max=hi), yq)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


class QuantizedActivation(nn.Sequential):
    """An activation module followed by its quantizer (what :func:`insert_activation_quantizers` inserts)."""

    def __init__(self, activation: nn.Module, quantizer: nn.Module) -> None:
        super().__init__(activation, quantizer)

    @property
    def quantizer(self) -> nn.Module:
        return self[1]


def insert_activation_quantizers(model: nn.Module, bits: int = 8, method: str = "pact",
                                 after: Sequence[type[nn.Module]] | type[nn.Module] = (nn.ReLU, nn.ReLU6), *,
                                 init_clip: float | None = None, momentum: float = 0.1) -> list[str]:
    """Wrap every activation module of the types in ``after`` as ``QuantizedActivation(act, quantizer)``, in
    place; return the wrapped modules' names.

    method: ``"pact"`` (learned clip; ``init_clip`` default 6 after ReLU6, else 10) or ``"observer"`` (running
    min-max, ``momentum``). Quantizers are created on the device of the model's first parameter or buffer.
    Raises ModelError when the model has no such module (functional activations cannot be wrapped).
    """
    check_int("insert_activation_quantizers", "bits", bits, 1, 16)
    if method not in ACTIVATION_METHODS:
        raise ConfigError(f"activation quantizer method {method!r} is unknown; use 'pact' or 'observer'")
    kinds = (after,) if isinstance(after, type) else tuple(after)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise ConfigError(f"after must be nn.Module classes such as (nn.ReLU, nn.ReLU6), got {after!r}")
    device = _device_of(model)
    wrapped: dict[int, QuantizedActivation] = {}
    names: list[str] = []
    already = 0
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        if isinstance(parent, QuantizedActivation):
            already += 1
            continue
        if ".parametrizations" in f".{parent_name}":
            continue
        for child_name, child in list(parent._modules.items()):
            if child is None or not isinstance(child, kinds) or isinstance(child, QuantizedActivation):
                continue
            if id(child) not in wrapped:
                wrapped[id(child)] = QuantizedActivation(child, _quantizer(child, bits, method, init_clip, momentum,
                                                                           device))
            parent._modules[child_name] = wrapped[id(child)]
            names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not names and already:
        raise ConfigError(f"{type(model).__name__}'s activations already have quantizers ({already}); build the model "
                          "again to change them")
    if not names:
        kinds_text = ", ".join(k.__name__ for k in kinds)
        raise ModelError(f"{type(model).__name__} has no {kinds_text} module to quantize after; activations applied "
                         "as functions (F.relu) cannot be wrapped: use nn.ReLU modules, or pass after=(...)")
    return names


def _device_of(model: nn.Module) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


def _quantizer(activation: nn.Module, bits: int, method: str, init_clip: float | None, momentum: float,
               device: torch.device | str) -> nn.Module:
    if method == "pact":
        clip = init_clip if init_clip is not None else (6.0 if isinstance(activation, nn.ReLU6) else 10.0)
        return PACT(bits, clip, device=device)
    return ObserverFakeQuant(bits, momentum, device=device)


def wrapped_activations(model: nn.Module) -> dict[str, QuantizedActivation]:
    """``{name: QuantizedActivation}`` of every wrapped activation of ``model`` (every name of a shared one), in
    model order."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, QuantizedActivation) and ".parametrizations" not in f".{name}"}


def wrapper_state(model: nn.Module) -> dict:
    """The JSON description of the model's wrapped activations: ``{"version": 1, "modules": {name: record}}`` with
    record ``{"activation": class name, "method", "bits"}`` plus ``"clip"`` (PACT's α) or ``"momentum"``,
    ``"range"`` ([min, max]) and ``"observed"`` (the observer's state)."""
    modules: dict[str, dict] = {}
    for name, wrapper in wrapped_activations(model).items():
        q = wrapper.quantizer
        record: dict = {"activation": type(wrapper[0]).__name__, "bits": int(q.bits)}  # type: ignore[arg-type]
        if isinstance(q, PACT):
            clip = float(q.clip.detach())
            if not math.isfinite(clip):
                raise QuantizationError(f"activation {name!r}: its PACT clip α is {clip}, not a number a model file "
                                        "can hold; the training diverged (lower the learning rate)")
            record.update(method="pact", clip=clip)
        elif isinstance(q, ObserverFakeQuant):
            record.update(method="observer", momentum=q.momentum, observed=bool(q.observed),
                          range=[float(q.running_min), float(q.running_max)])
        else:
            raise QuantizationError(f"activation {name!r} has a quantizer of type {type(q).__name__}, which a model "
                                    "file cannot describe; use PACT or ObserverFakeQuant")
        modules[name] = record
    return {"version": WRAPPERS_VERSION, "modules": modules}


def restore_wrappers(model: nn.Module, state: dict) -> list[str]:
    """Wrap the activations that ``state`` (from :func:`wrapper_state`) names in ``model`` (a freshly built copy of
    the network), in place, with quantizers holding the recorded α / range; return the names wrapped.

    A module already wrapped with the recorded method and bits keeps its wrapper (its quantizer's values are set).
    Raises ConfigError for a malformed state, ModelError when a named module is missing or of another type.
    """
    if not isinstance(state, dict) or state.get("version") != WRAPPERS_VERSION or not isinstance(
            state.get("modules"), dict):
        raise ConfigError(f"activation wrapper state must be a dict with version {WRAPPERS_VERSION} and 'modules' "
                          "(from learnq.activations.wrapper_state)")
    device = _device_of(model)
    made: dict[int, QuantizedActivation] = {}
    for name, rec in state["modules"].items():
        parent_name, _, child_name = name.rpartition(".")
        try:
            method, bits, kind = str(rec["method"]), int(rec["bits"]), str(rec["activation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the activation state of {name!r} is malformed ({exc!r})") from None
        try:
            parent = model.get_submodule(parent_name)
            child = parent._modules[child_name]
        except (AttributeError, KeyError):
            raise ModelError(f"the activation state names module {name!r}, which the model does not have; load it "
                             "into the network it was made from") from None
        if method not in ACTIVATION_METHODS:
            raise ConfigError(f"the activation state of {name!r} has unknown method {method!r}")
        if isinstance(child, QuantizedActivation):
            wrapper = child
        elif id(child) in made:
            wrapper = made[id(child)]
        else:
            if child is None or type(child).__name__ != kind:
                raise ModelError(f"module {name!r} is {type(child).__name__} in the model but {kind} in the "
                                 "activation state; load it into the network it was made from")
            wrapper = QuantizedActivation(child, _quantizer(child, bits, method, 1.0, float(rec.get("momentum", 0.1)),
                                                            device))
            made[id(child)] = wrapper
        q = wrapper.quantizer
        if type(wrapper[0]).__name__ != kind or (type(q) is not (PACT if method == "pact" else ObserverFakeQuant)) \
                or q.bits != bits:
            raise ModelError(f"module {name!r} is already wrapped with another activation or quantizer than the "
                             "activation state records; build the model again")
        try:
            with torch.no_grad():
                if isinstance(q, PACT):
                    q.clip.fill_(float(rec["clip"]))
                else:
                    lo, hi = (float(v) for v in rec["range"])
                    q.running_min.fill_(lo)
                    q.running_max.fill_(hi)
                    q.observed.fill_(bool(rec["observed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the activation state of {name!r} is malformed ({exc!r})") from None
        parent._modules[child_name] = wrapper
    return list(state["modules"])


__all__ = ["PACT", "MIN_CLIP", "ObserverFakeQuant", "QuantizedActivation", "insert_activation_quantizers",
           "ACTIVATION_METHODS", "WRAPPERS_KEY", "WRAPPERS_VERSION", "wrapped_activations", "wrapper_state",
           "restore_wrappers"]
