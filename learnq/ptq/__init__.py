"""Post-training quantization: weight grids, clipping rules, bias correction, AdaRound and LAPQ (seeds/001).

``quantize(model, calibration_data, PTQ(method=..., wbits=..., abits=...))`` is the entry point (learnq.ptq.api;
keyword use ``quantize(model, calib, method=..., wbits=...)`` builds the same config); ``PTQ_METHODS`` the registry
(learnq.ptq.registry); ``quantize_weights`` the weight-only min-max PTQ (a :class:`PTQWeight` per weight, frozen).
"""

from learnq.clipping import CLIP_METHODS, choose_clip
from learnq.ptq.api import PTQResult, quantize
from learnq.ptq.bias_correction import correct_bias
from learnq.ptq.config import PTQ
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers, quantize_weights
from learnq.ptq.registry import PTQ_METHODS, available_methods, get_ptq_method, register_ptq_method

__all__ = ["CLIP_METHODS", "PTQ", "PTQ_METHODS", "PTQContext", "PTQMethod", "PTQResult", "PTQWeight",
           "attach_weight_quantizers", "available_methods", "choose_clip", "correct_bias", "get_ptq_method", "quantize",
           "quantize_weights", "register_ptq_method"]
