"""Model-file fields: what a model file records about a model besides its tensors, each one module (DESIGN.md,
"honest model files"; the file layout is :mod:`learnq.checkpoint`'s).

A field is an object with

* ``key`` (its metadata key), ``version`` (of its entry), ``what`` (a few words for error messages);
* ``state(model) -> JSON | None``: the entry :func:`learnq.save` writes (None: nothing to record);
* ``restore(model, value, tensors)``: what :func:`learnq.load` does with the entry on a freshly built model before
  the file's tensors are loaded into it (``tensors``: the file's float tensors by name);
* optionally ``legacy() -> {older key: restore function}``: keys older files used for the same thing.

``save`` writes every field's state unless the caller's ``metadata`` already holds its key; ``load`` restores the
fields in the order of :data:`FIELDS`. A new field (e.g. the palettes of weight clustering) is its module here plus
one entry of :data:`FIELDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from learnq.fields import activations, folded_bn, ptq_config


class FileField(Protocol):
    key: str
    version: int
    what: str

    def state(self, model: nn.Module) -> Any | None: ...

    def restore(self, model: nn.Module, value: Any, tensors: Mapping[str, torch.Tensor]) -> None: ...


FIELDS: tuple[FileField, ...] = (folded_bn.FIELD, activations.FIELD, ptq_config.FIELD)
"""The fields, in the order load restores them (BatchNorm folding first: it changes which tensors the model has)."""


def field_states(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of every field ``model`` has something to record for, except keys already in ``given``."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f.key in given:
            continue
        value = f.state(model)
        if value is not None:
            out[f.key] = value
    return out


def restorers(metadata: Mapping[str, Any]) -> list[tuple[FileField, Callable[..., None], Any]]:
    """``(field, restore function, value)`` for every field entry (current or legacy key) ``metadata`` holds, in
    restore order."""
    out = []
    for f in FIELDS:
        if f.key in metadata:
            out.append((f, f.restore, metadata[f.key]))
        legacy = getattr(f, "legacy", None)
        for key, fn in (legacy() if legacy is not None else {}).items():
            if key in metadata:
                out.append((f, fn, metadata[key]))
    return out


__all__ = ["FIELDS", "FileField", "field_states", "restorers"]
