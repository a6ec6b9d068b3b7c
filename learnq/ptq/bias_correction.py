"""Bias correction of quantized weights (Banner et al., "Post-training 4-bit quantization of convolution networks
for rapid-deployment", arXiv:1810.05723, §4 "per-channel bias correction"; used by LAPQ, seeds/001 §5.3 Table 4).

Quantization shifts the mean (and changes the spread) of each output channel of a weight. Per output channel c,
with μ, σ the mean and (population) standard deviation of the float weights w_c and of the quantized ŵ_c
(METHODS.md §2):

    variance step (optional, first):  ŵ_c ← (ŵ_c - μ_q)·σ_w/(σ_q + 1e-8) + μ_q
    mean step:                        ŵ_c ← ŵ_c - (mean(ŵ_c) - mean(w_c))

Both steps together are one affine map per channel, ``ŵ_c ← r_c·ŵ_c + t_c`` (:func:`correction_terms`), which is
how :class:`learnq.ptq.ptq_weight.PTQWeight` folds them into a per-channel step and offset. A channel whose
quantized values are all equal (σ_q = 0) keeps r = 1 (the formula's r = σ_w/1e-8 would only amplify rounding noise;
with σ_q = 0 the variance step cannot change ŵ anyway).
"""

from __future__ import annotations

import torch

from learnq.errors import ConfigError

EPS = 1e-8


def _channels(t: torch.Tensor, axis: int) -> torch.Tensor:
    """(C, n) float32 view: one row per index along ``axis``."""
    if t.ndim == 0:
        return t.reshape(1, 1)
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def _check(w_q: torch.Tensor, w: torch.Tensor, axis: int) -> int:
    if not isinstance(w_q, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise ConfigError("correct_bias takes two tensors: the quantized weight and the float weight")
    if w_q.shape != w.shape:
        raise ConfigError(f"the quantized weight has shape {tuple(w_q.shape)} but the float weight has "
                          f"{tuple(w.shape)}; they must match")
    if w.ndim == 0:
        return 0
    if isinstance(axis, bool) or not isinstance(axis, int) or not -w.ndim <= axis < w.ndim:
        raise ConfigError(f"axis {axis!r} does not exist in a weight of shape {tuple(w.shape)}")
    return axis % w.ndim


def correction_terms(w_q: torch.Tensor, w: torch.Tensor, *, variance: bool = False,
                     axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, t)`` per channel (float32, shape ``(C,)``) such that the corrected weight is ``r·ŵ + t`` per channel."""
    axis = _check(w_q, w, axis)
    q = _channels(w_q.detach().float(), axis)
    f = _channels(w.detach().float(), axis)
    mu_q, mu_w = q.mean(dim=1), f.mean(dim=1)
    if variance:
        sd_q = q.std(dim=1, correction=0)
        sd_w = f.std(dim=1, correction=0)
        r = torch.where(sd_q > 0, sd_w / (sd_q + EPS), torch.ones_like(sd_q))
    else:
        r = torch.ones_like(mu_q)
    # (ŵ - μq)·r + μq has mean μq; the mean step then adds μw - μq:  r·ŵ + (μw - r·μq)
    return r, mu_w - r * mu_q


def correct_bias(w_q: torch.Tensor, w: torch.Tensor, *, variance: bool = False, axis: int = 0) -> torch.Tensor:
    """The quantized weight ``w_q`` with each channel along ``axis`` (the output channel) corrected so that its mean
    (and with ``variance=True`` first its standard deviation) equals that of the float weight ``w``.

    Applied after any step selection; computed in float64 when either input is float64, else float32; returns a new
    tensor of ``w_q``'s dtype.
    """
    axis = _check(w_q, w, axis)
    dtype = torch.float64 if torch.float64 in (w_q.dtype, w.dtype) else torch.float32
    q = _channels(w_q.detach().to(dtype), axis)
    f = _channels(w.detach().to(dtype), axis)
    if variance:
        mu_q = q.mean(dim=1, keepdim=True)
        sd_q = q.std(dim=1, correction=0, keepdim=True)
        sd_w = f.std(dim=1, correction=0, keepdim=True)
        ratio = torch.where(sd_q > 0, sd_w / (sd_q + EPS), torch.ones_like(sd_q))
        q = (q - mu_q) * ratio + mu_q
    q = q - (q.mean(dim=1, keepdim=True) - f.mean(dim=1, keepdim=True))
    if w_q.ndim == 0:
        return q.reshape(()).to(w_q.dtype)
    moved = [w_q.shape[axis]] + [s for i, s in enumerate(w_q.shape) if i != axis]
    return q.reshape(moved).movedim(0, axis).to(w_q.dtype).contiguous()


__all__ = ["EPS", "correct_bias", "correction_terms"]
