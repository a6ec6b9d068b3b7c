"""Post-training quantization: weight grids, clipping rules, bias correction, AdaRound and LAPQ (seeds/001).

``quantize(model, calibration_data, method=..., wbits=..., abits=...)`` is the entry point (learnq.ptq.api);
``quantize_weights`` is the weight-only min-max PTQ (a :class:`PTQWeight` per weight, frozen).
"""

from learnq.clipping import CLIP_METHODS, choose_clip
from learnq.ptq.api import PTQ_METHODS, PTQContext, PTQMethod, PTQResult, quantize, register_ptq_method
from learnq.ptq.bias_correction import correct_bias
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers, quantize_weights

__all__ = ["CLIP_METHODS", "PTQ_METHODS", "PTQContext", "PTQMethod", "PTQResult", "PTQWeight",
           "attach_weight_quantizers", "choose_clip", "correct_bias", "quantize", "quantize_weights",
           "register_ptq_method"]
