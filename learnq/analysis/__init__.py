"""Analyses of weights and quantized models: weight statistics and histograms, layer-wise KL, step robustness, the
loss landscape over two quantization steps and the Hessian of the loss w.r.t. the steps (LAPQ, seeds/001)."""

from learnq._lazy import lazy_submodules

SUBMODULES = ("hessian", "kl", "landscape", "plots", "robustness", "weights")
__getattr__, __dir__ = lazy_submodules(__name__, SUBMODULES, globals())  # learnq.analysis.kl etc. on first access
