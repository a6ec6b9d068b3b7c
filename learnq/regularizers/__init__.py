"""Quantization-friendly training: weight regularizers (DSMM, SymReg, KURE, L2) and the SatNL reparametrisation.

``REGULARIZERS`` maps the names used in recipes and by ``learnq list`` to the classes; ``build_regularizer`` builds
one by name. SatNL is not a loss but a weight reparametrisation (``SatNL.apply(model)``), so it is not in the registry.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from learnq.errors import ConfigError
from learnq.regularizers.base import Regularizer
from learnq.regularizers.dsmm import DSMM, dsmm_loss
from learnq.regularizers.kure import KURE, kure_loss, kurtosis
from learnq.regularizers.l2 import L2, L2Heavy, l2_loss
from learnq.regularizers.satnl import SatNL, TanhSaturation
from learnq.regularizers.symreg import SymReg, symreg_loss

#: name -> Regularizer class, for recipes and ``learnq list``.
REGULARIZERS: dict[str, type[Regularizer]] = {cls.name: cls for cls in (DSMM, SymReg, KURE, L2, L2Heavy)}


def describe_regularizers() -> dict[str, str]:
    """name -> one-line description, in registry order."""
    return {name: cls.description for name, cls in REGULARIZERS.items()}


def build_regularizer(name: str, model: nn.Module, **kwargs: Any) -> Regularizer:
    """Build the regularizer registered under ``name`` on ``model`` (keyword arguments go to its constructor)."""
    if name not in REGULARIZERS:
        raise ConfigError(f"unknown regularizer {name!r}; choose one of: {', '.join(REGULARIZERS)}")
    cls = REGULARIZERS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for regularizer {name!r}; it takes: {', '.join(allowed)}")
    return cls(model, **kwargs)


__all__ = [
    "REGULARIZERS",
    "Regularizer",
    "DSMM",
    "SymReg",
    "KURE",
    "L2",
    "L2Heavy",
    "SatNL",
    "TanhSaturation",
    "build_regularizer",
    "describe_regularizers",
    "dsmm_loss",
    "symreg_loss",
    "kure_loss",
    "kurtosis",
    "l2_loss",
]
