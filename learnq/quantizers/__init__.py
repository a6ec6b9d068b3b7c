"""Training-time weight quantizers (METHODS.md sections 4-6): the registry of QAT methods and their configs.

Each method is a typed config (``STE``, ``LSQ``, ``Nested``, ``DiffQ``) that :func:`learnq.prepare` turns into one
``torch.nn.utils.parametrize`` parametrization per selected parameter. ``QAT_METHODS`` maps the method's name to its
config class; ``QAT_METHODS[name].description`` is a one-line summary (used by the CLI and recipes).
"""

from __future__ import annotations

from learnq.quantizers.base import QATConfig, WeightQuantizer
from learnq.quantizers.diffq import DiffQ, DiffQQuantizer, pseudo_quantize
from learnq.quantizers.lsq import LSQ, LSQQuantizer
from learnq.quantizers.nested import Nested, NestedQuantizer, nested_quantize
from learnq.quantizers.ste import STE, STEQuantizer, fake_quantize_ste

QAT_METHODS: dict[str, type[QATConfig]] = {"ste": STE, "lsq": LSQ, "nested": Nested, "diffq": DiffQ}


def describe_methods() -> dict[str, str]:
    """Method name -> one-line description."""
    return {name: cls.description for name, cls in QAT_METHODS.items()}


__all__ = ["QAT_METHODS", "describe_methods", "QATConfig", "WeightQuantizer", "STE", "STEQuantizer",
           "fake_quantize_ste", "LSQ", "LSQQuantizer", "Nested", "NestedQuantizer", "nested_quantize", "DiffQ",
           "DiffQQuantizer", "pseudo_quantize"]
