"""Tests for learnq.ptq.bias_correction: per-channel mean (and variance) correction of quantized weights."""

from __future__ import annotations

import pytest
import torch

from learnq.errors import ConfigError
from learnq.grid import GridSpec, quantize_tensor
from learnq.ptq.bias_correction import correct_bias, correction_terms


def test_by_hand() -> None:
    w_q = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    w = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # row 0: mean 1 -> 0.5; row 1: mean 3 -> 2
    assert correct_bias(w_q, w).tolist() == [[0.5, 0.5], [1.0, 3.0]]
    # variance step: row 1 has σ_q = 1, σ_w = 0 -> (ŵ - 3)·0 + 3 = [3, 3], then the mean step -> [2, 2];
    # row 0 has σ_q = 0: r = 1 (nothing to rescale), the mean step alone
    assert correct_bias(w_q, w, variance=True).tolist() == [[0.5, 0.5], [2.0, 2.0]]


def test_means_equal_per_output_channel() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3, dtype=torch.float64) * 0.2 + 0.05
    w_q = quantize_tensor(w, GridSpec(3), method="minmax").dequantize()
    before = (w_q - w).reshape(8, -1).mean(dim=1).abs()
    assert before.max() > 1e-4  # quantization did shift the means
    out = correct_bias(w_q, w)
    assert out.dtype == torch.float64 and out.shape == w.shape
    # float64 means of 27 values |x| < 0.62 (summed in an order that depends on the CPU's vector width): each within
    # 26·2⁻⁵³·0.62 ≈ 1.8e-15 of exact, three of them in the comparison; the shift being corrected is > 1e-4
    assert torch.allclose(out.reshape(8, -1).mean(dim=1), w.reshape(8, -1).mean(dim=1), rtol=0, atol=1e-14)
    # the mean step only shifts each channel
    assert torch.allclose((out - w_q).reshape(8, -1).std(dim=1), torch.zeros(8, dtype=torch.float64), atol=1e-15)


def test_variance_step_matches_std_and_mean() -> None:
    torch.manual_seed(1)
    w = torch.randn(6, 20) * torch.linspace(0.1, 1.0, 6).unsqueeze(1)
    w_q = quantize_tensor(w, GridSpec(2, granularity="channel")).dequantize()
    assert not torch.allclose(w_q.std(dim=1), w.std(dim=1), rtol=1e-2)
    out = correct_bias(w_q, w, variance=True)
    assert torch.allclose(out.std(dim=1, correction=0), w.std(dim=1, correction=0), rtol=1e-5)
    assert torch.allclose(out.mean(dim=1), w.mean(dim=1), atol=1e-6)
    # without the variance step the spread stays that of the quantized weight
    plain = correct_bias(w_q, w)
    assert torch.allclose(plain.std(dim=1, correction=0), w_q.std(dim=1, correction=0), rtol=1e-5)


def test_axis_and_affine_terms() -> None:
    torch.manual_seed(2)
    w = torch.randn(5, 7)
    w_q = quantize_tensor(w, GridSpec(3)).dequantize()
    by_col = correct_bias(w_q, w, axis=1)
    assert torch.allclose(by_col, correct_bias(w_q.T, w.T, axis=0).T)
    assert torch.allclose(by_col.mean(dim=0), w.mean(dim=0), atol=1e-6)
    for variance in (False, True):
        r, t = correction_terms(w_q, w, variance=variance)
        assert r.shape == t.shape == (5,)
        assert torch.allclose(r.unsqueeze(1) * w_q + t.unsqueeze(1), correct_bias(w_q, w, variance=variance),
                              atol=1e-6)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="shape"):
        correct_bias(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="axis"):
        correct_bias(torch.zeros(2, 3), torch.zeros(2, 3), axis=2)
