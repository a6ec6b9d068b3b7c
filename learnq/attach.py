"""Which parameters a method quantizes: layer type, name patterns, minimum size, first/last layer, per-name bits.

Every quantizer (PTQ or training-time) picks its parameters through :class:`Selection`, so "keep the first and last
layers at 8 bits" or "skip depthwise convolutions" is written once. Name patterns are shell globs
(``fnmatch``) on the parameter's dotted name, e.g. ``"features.*.weight"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.layers import LAYER_TYPES, is_depthwise
from learnq.quantized import full_name, holders, holders_index


@dataclass(frozen=True)
class Selection:
    """A rule choosing parameters.

    types: layer kinds whose parameters are candidates (``linear``, ``conv``, ``embedding``).
    include / exclude: globs on the parameter name; a parameter must match one include and no exclude.
    biases: also take the layers' biases. min_numel: skip smaller tensors.
    skip_first / skip_last: leave the first / last candidate layer (in definition order) out.
    skip_depthwise: leave depthwise convolutions out.
    """

    types: tuple[str, ...] = ("linear", "conv")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    biases: bool = False
    min_numel: int = 0
    skip_first: bool = False
    skip_last: bool = False
    skip_depthwise: bool = False

    def __post_init__(self) -> None:
        for t in self.types:
            if t not in LAYER_TYPES:
                raise ConfigError(f"layer type {t!r} is unknown; use {', '.join(LAYER_TYPES)}")
        if not isinstance(self.min_numel, int) or self.min_numel < 0:
            raise ConfigError(f"min_numel must be an integer >= 0, got {self.min_numel!r}")
        for key in ("types", "include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, (value,))


def candidate_layers(model: nn.Module, selection: Selection = Selection()) -> list[tuple[str, nn.Module]]:
    """The model's layers of the selected types, in definition order, first/last/depthwise rules applied."""
    kinds = tuple(t for name in selection.types for t in LAYER_TYPES[name])
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if selection.skip_depthwise:
        layers = [(n, m) for n, m in layers if not is_depthwise(m)]
    if selection.skip_first and layers:
        layers = layers[1:]
    if selection.skip_last and layers:
        layers = layers[:-1]
    return layers


def select_parameters(model: nn.Module, selection: Selection = Selection(), *, require: bool = True) -> list[str]:
    """Dotted names of the selected parameters (``"fc.weight"``...). Raises ModelError when none is selected."""
    names: list[str] = []
    for layer_name, layer in candidate_layers(model, selection):
        params = ["weight"] + (["bias"] if selection.biases else [])
        for p in params:
            tensor = getattr(layer, p, None)
            if tensor is None:
                continue
            full = f"{layer_name}.{p}" if layer_name else p
            if not any(fnmatch.fnmatchcase(full, pat) for pat in selection.include):
                continue
            if any(fnmatch.fnmatchcase(full, pat) for pat in selection.exclude):
                continue
            if tensor.numel() < selection.min_numel:
                continue
            names.append(full)
    if require and not names:
        raise ModelError(
            f"no parameter of {type(model).__name__} matches the selection (types={list(selection.types)}, "
            f"include={list(selection.include)}, exclude={list(selection.exclude)}); the model needs a "
            "linear or conv layer, or widen the selection")
    return names


def check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    """Raise ModelError when parameter ``name`` holds NaN or Inf values (``what``: the caller, for the message)."""
    with torch.no_grad():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            raise ModelError(f"parameter {name!r} has {int((~finite).sum())} NaN or Inf value(s) of "
                             f"{tensor.numel()}; {what} needs finite weights: fix the model (or its training) first")


def select_weights(model: nn.Module, selection: Selection = Selection(), *,
                   require: bool = True) -> tuple[list[str], dict[str, str]]:
    """The selected parameters for a quantizer that serves every holder of a tied parameter (PTQ), and the tied
    ones left in float.

    Returns (names, float_reasons). ``names``: :func:`select_parameters` with each Parameter once (a tied one under
    its first selected name; the quantizer attached to it is registered on every module holding it, as
    :func:`learnq.prepare` does, so the tied modules keep computing with one tensor). A tied parameter one of whose
    holders the selection leaves in float (a conv/linear layer of the selected types that is not selected: first or
    last layer, excluded by name, depthwise; or a name an exclude pattern matches) is left out, in float in every
    holder: ``float_reasons`` maps each of its holders' names to why. A tied parameter is never split.
    """
    names = select_parameters(model, selection, require=require)
    chosen = set(names)
    kinds = tuple(t for name in selection.types for t in LAYER_TYPES[name])
    index = holders_index(model)
    out: list[str] = []
    reasons: dict[str, str] = {}
    done: set[str] = set()
    for name in names:
        if name in done or name in reasons:
            continue
        every = holders(model, name, index)
        others = [(full_name(m, a), module) for m, module, a in every[1:]]
        done.update(n for n, _ in others)
        blocked = [n for n, module in others if n not in chosen and (
            isinstance(module, kinds) or any(fnmatch.fnmatchcase(n, pat) for pat in selection.exclude))]
        if blocked:
            tie = [name] + [n for n, _ in others]
            for holder in tie:
                partners = ", ".join(repr(n) for n in tie if n != holder)
                reasons[holder] = (f"weight tied to {partners}, and the selection leaves "
                                   f"{', '.join(repr(b) for b in blocked)} in float: kept in float in every holder "
                                   "(a tied weight is one tensor)")
            continue
        out.append(name)
    return out, reasons


def bits_for(name: str, default: int, overrides: Mapping[str, int] | None = None) -> int:
    """Bits of parameter ``name``: the first glob of ``overrides`` that matches it, else ``default``."""
    for pattern, bits in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return bits
    return default


@dataclass(frozen=True)
class BitsRule:
    """Default bit-width plus per-name overrides (e.g. ``{"0.weight": 8}`` keeps the first layer at 8 bits)."""

    default: int = 8
    overrides: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str) -> int:
        return bits_for(name, self.default, self.overrides)
