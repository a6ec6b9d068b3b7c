"""Analyses of weights and quantized models: weight statistics and histograms, layer-wise KL, step robustness, the
loss landscape over two quantization steps and the Hessian of the loss w.r.t. the steps (LAPQ, seeds/001)."""
