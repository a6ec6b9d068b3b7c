"""Analyses of weights and quantized models: weight statistics and histograms, layer-wise KL, step robustness."""
