"""Training-time weight quantizers (METHODS.md sections 4-6): the registry of QAT methods and their configs.

Each method is one file here holding its quantizer and its typed config (``STE``, ``LSQ``, ``Nested``, ``DiffQ``),
which :func:`learnq.prepare` turns into one ``torch.nn.utils.parametrize`` parametrization per selected parameter.
``QAT_METHODS`` maps the method's name to its config class; ``QAT_METHODS[name].description`` is a one-line summary
(used by the CLI and recipes). Everything else (recipes, ``learnq list``, sweeps, tests) reads this registry, so a
new method is its file plus one entry in the tuple below (docs/architecture.md).
"""

from __future__ import annotations

from learnq.quantizers.base import WeightQuantizer
from learnq.quantizers.config import QAT_METHODS, QATConfig, register_qat_method, resolve_config
from learnq.quantizers.diffq import DiffQ, DiffQQuantizer, pseudo_quantize
from learnq.quantizers.dkm import DKM, DKMQuantizer
from learnq.quantizers.dorefa import DoReFa, DoReFaQuantizer
from learnq.quantizers.ipq import IPQ, IPQQuantizer
from learnq.quantizers.ipq_layerwise import IPQLayerwise, LayerwiseIPQQuantizer
from learnq.quantizers.lsq import LSQ, LSQQuantizer
from learnq.quantizers.nested import Nested, NestedQuantizer, nested_quantize
from learnq.quantizers.quant_noise import QuantNoise, QuantNoiseQuantizer
from learnq.quantizers.ste import STE, STEQuantizer, fake_quantize_ste

# the QAT method registry: one entry per method
for _config in (STE, LSQ, Nested, DiffQ, DKM, DoReFa, QuantNoise, IPQ, IPQLayerwise):
    register_qat_method(_config)


def describe_methods() -> dict[str, str]:
    """Method name -> one-line description."""
    return {name: cls.description for name, cls in QAT_METHODS.items()}


__all__ = ["QAT_METHODS", "describe_methods", "QATConfig", "WeightQuantizer", "register_qat_method", "resolve_config",
           "STE", "STEQuantizer", "fake_quantize_ste", "LSQ", "LSQQuantizer", "Nested", "NestedQuantizer",
           "nested_quantize", "DiffQ", "DiffQQuantizer", "pseudo_quantize", "DKM", "DKMQuantizer", "DoReFa",
           "DoReFaQuantizer", "QuantNoise", "QuantNoiseQuantizer", "IPQ", "IPQQuantizer",
           "IPQLayerwise", "LayerwiseIPQQuantizer"]
