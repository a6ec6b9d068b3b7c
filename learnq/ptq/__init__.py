"""Post-training quantization: weight grids, clipping rules, bias correction, AdaRound and LAPQ (seeds/001)."""

from learnq.ptq.weights import quantize_weights

__all__ = ["quantize_weights"]
