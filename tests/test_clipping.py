"""Tests for learnq.clipping: every rule against a hand computation or a brute-force search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learnq.clipping import (
    ACIQ_GAUSS,
    ACIQ_LAPLACE,
    CLIP_METHODS,
    aciq_k,
    choose_clip,
    clip_aciq,
    clip_kl,
    clip_lp,
    clip_minmax,
    clip_mse,
    fake_quant_alpha,
    kl_divergences,
    lp_error,
)
from learnq.errors import ConfigError, QuantizationError
from learnq.grid import GridSpec, quantize_tensor


def _q_symmetric(x: np.ndarray, alpha: float, bits: int) -> np.ndarray:
    """The signed symmetric grid written out by hand: Δ = α/(2^(b-1)-1), codes -2^(b-1)..2^(b-1)-1."""
    top = 2 ** (bits - 1) - 1
    delta = alpha / top
    return np.clip(np.round(x / delta), -top - 1, top) * delta


def _q_unsigned(x: np.ndarray, alpha: float, bits: int) -> np.ndarray:
    delta = alpha / (2**bits - 1)
    return np.clip(np.round(x / delta), 0, 2**bits - 1) * delta


def _dense_search(x: np.ndarray, bits: int, p: float, quant, top: float, n: int = 5000) -> tuple[float, float]:
    alphas = np.linspace(top / n, top, n)
    errs = np.array([np.mean(np.abs(quant(x, a, bits) - x) ** p) for a in alphas])
    i = int(np.argmin(errs))
    return float(alphas[i]), float(errs[i])


def test_minmax_by_hand() -> None:
    x = torch.tensor([[1.0, -3.0, 2.0], [0.5, 0.25, -0.1]])
    assert clip_minmax(x, GridSpec(4)).tolist() == [3.0]
    assert clip_minmax(x, GridSpec(4, granularity="channel")).tolist() == [3.0, 0.5]
    assert clip_minmax(x, GridSpec(4, scheme="unsigned", granularity="channel")).tolist() == [2.0, 0.5]
    assert clip_minmax(x, GridSpec(4, granularity="column")).tolist() == [1.0, 3.0, 2.0]
    out = clip_minmax(x, GridSpec(4, granularity="group:4"))
    assert out.dtype == torch.float32 and out.tolist() == [3.0, 0.25]


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("bits", [2, 4])
def test_lp_matches_dense_grid_search(p: float, bits: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(300) * 0.7
    x[0] = 4.0  # an outlier makes clipping worthwhile
    alpha = float(clip_lp(x, GridSpec(bits), p=p))
    xs = x.double().numpy()
    best_alpha, best_err = _dense_search(xs, bits, p, _q_symmetric, float(np.abs(xs).max()))
    ours = float(np.mean(np.abs(_q_symmetric(xs, alpha, bits) - xs) ** p))
    assert ours <= best_err * (1 + 1e-3)
    assert 0 < alpha < 4.0  # the outlier is clipped
    assert ours < float(np.mean(np.abs(_q_symmetric(xs, 4.0, bits) - xs) ** p))  # better than min-max


def test_lp_unsigned_grid_for_post_relu_values() -> None:
    torch.manual_seed(2)
    x = torch.randn(400).relu() * 2
    alpha = float(clip_lp(x, GridSpec(3, scheme="unsigned"), p=2.0))
    xs = x.double().numpy()
    _, best_err = _dense_search(xs, 3, 2.0, _q_unsigned, float(xs.max()))
    ours = float(np.mean((_q_unsigned(xs, alpha, 3) - xs) ** 2))
    assert ours <= best_err * (1 + 1e-3)
    # the unsigned grid spends every level on [0, α]: its error is below the signed grid's at the same bits
    signed = float(clip_lp(x, GridSpec(3), p=2.0))
    assert ours < float(np.mean((_q_symmetric(xs, signed, 3) - xs) ** 2))


def test_lp_per_channel_equals_each_row_alone() -> None:
    torch.manual_seed(3)
    w = torch.randn(4, 50) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    per = clip_lp(w, GridSpec(4, granularity="channel"), p=2.5)
    rows = torch.cat([clip_lp(w[i], GridSpec(4), p=2.5) for i in range(4)])
    assert per.shape == (4,)
    assert torch.allclose(per, rows, rtol=1e-6)


def test_mse_is_lp_with_p_2_and_error_helper() -> None:
    torch.manual_seed(4)
    x = torch.randn(5, 40)
    spec = GridSpec(3, granularity="channel")
    assert torch.equal(clip_mse(x, spec), clip_lp(x, spec, p=2.0))
    alpha = clip_mse(x, spec)
    # lp_error is mean|Q(x)-x|^p per group, with Q the grid of learnq.grid at clip α
    qt = quantize_tensor(x, spec, clip=alpha)
    expected = ((qt.dequantize() - x) ** 2).mean(dim=1)
    assert torch.allclose(lp_error(x, alpha, spec, 2.0), expected, rtol=1e-5, atol=1e-8)


def test_fake_quant_alpha_matches_grid_module() -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 7)
    for scheme in ("symmetric", "lapq", "unsigned"):
        for bits in (1, 2, 5):
            spec = GridSpec(bits, scheme=scheme, granularity="channel")
            alpha = torch.rand(6) + 0.5
            rows = spec.granularity.view(x)
            ours = fake_quant_alpha(rows, alpha.unsqueeze(1), spec)
            ref = quantize_tensor(x, spec, clip=alpha).dequantize()
            assert torch.allclose(ours, ref, atol=1e-6), (scheme, bits)


def test_zero_and_constant_groups_give_finite_alpha() -> None:
    x = torch.zeros(3, 8)
    x[1] = 2.0
    for method in CLIP_METHODS:
        alpha = choose_clip(x, GridSpec(4, granularity="channel"), method)
        assert torch.isfinite(alpha).all()
        assert alpha[0] == 0.0


def test_aciq_tables_and_formula() -> None:
    torch.manual_seed(6)
    x = torch.randn(20000) * 0.5
    x[0] = 50.0  # a far outlier so that k·σ stays below max|x| (no cap)
    xd = x.double()
    sigma = float(xd.std(correction=0))
    b = float((xd - xd.mean()).abs().mean())
    assert math.isclose(float(clip_aciq(x, GridSpec(4), "gaussian")), 2.55 * sigma, rel_tol=1e-4)
    assert math.isclose(float(clip_aciq(x, GridSpec(4), "laplace")), 5.03 * b, rel_tol=1e-4)
    assert math.isclose(float(clip_aciq(x, GridSpec(2), "laplace")), 2.83 * b, rel_tol=1e-4)
    # a post-ReLU (unsigned) grid of b bits uses the signed k of b + 1 bits
    assert math.isclose(float(clip_aciq(x, GridSpec(4, scheme="unsigned"), "laplace")), 6.2 * b, rel_tol=1e-4)
    assert math.isclose(float(clip_aciq(x, GridSpec(8, scheme="unsigned"), "gaussian")), aciq_k(9, "gaussian")
                        * sigma, rel_tol=1e-4)


def test_aciq_k_reproduces_the_tables() -> None:
    for bits in range(1, 9):
        assert abs(aciq_k(bits, "gaussian") - ACIQ_GAUSS[bits]) < 0.01
        assert abs(aciq_k(bits, "laplace") - ACIQ_LAPLACE[bits]) < 0.01
    assert aciq_k(12, "laplace") > aciq_k(9, "laplace") > ACIQ_LAPLACE[8]


def test_aciq_capped_at_max_and_per_channel() -> None:
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.1, 0.2, 0.3, 0.4]])
    alpha = clip_aciq(x, GridSpec(8, granularity="channel"), "laplace")
    assert alpha[0] == 1.0  # k·b = 9.89 > max|x| = 1
    assert math.isclose(float(alpha[1]), 0.4, rel_tol=1e-6)  # b = 0.1, k·b = 0.989 > 0.4


def _reference_kl(hist: np.ndarray, levels: int) -> dict[int, float]:
    """TensorRT / MXNet calibration loop written plainly (nan counts as +inf)."""

    def smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
        zeros = p == 0
        n_zero, n_nonzero = zeros.sum(), (~zeros).sum()
        return np.where(zeros, eps, p - eps * n_zero / n_nonzero)

    out = {}
    for i in range(levels, hist.size + 1):
        sliced = hist[:i].astype(np.float64)
        p = sliced.copy()
        p[i - 1] += hist[i:].sum()
        nonzero = p != 0
        merged = i // levels
        q = np.zeros(i)
        for j in range(levels):
            start, stop = j * merged, (i if j == levels - 1 else (j + 1) * merged)
            norm = nonzero[start:stop].sum()
            if norm:
                q[start:stop] = sliced[start:stop].sum() / norm
        q[~nonzero] = 0
        if q.sum() == 0:
            out[i] = math.inf
            continue
        p, q = smooth(p / p.sum()), smooth(q / q.sum())
        keep = p > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            kl = float(np.sum(p[keep] * np.log(p[keep] / q[keep])))
        out[i] = math.inf if math.isnan(kl) else kl
    return out


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_kl_divergences_match_plain_reference_loop(levels: int) -> None:
    rng = np.random.default_rng(levels)
    hist = np.histogram(np.abs(rng.standard_normal(3000)), bins=120)[0].astype(np.float64)
    hist[100] += 3  # a far, sparse tail
    cands, kl = kl_divergences(torch.tensor(hist), levels)
    ref = _reference_kl(hist, levels)
    assert cands.tolist() == list(range(levels, 121))
    expected = np.array([ref[i] for i in cands.tolist()])
    got = kl.numpy()
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert np.allclose(got[finite], expected[finite], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme", ["symmetric", "unsigned"])
def test_kl_per_channel_equals_the_plain_per_channel_loop(scheme: str) -> None:
    # clip_kl searches all channels at once on their nonzero histogram bins only; the plain loop of before: per
    # channel its histogram, every candidate's divergence written out densely (_reference_kl), the first minimum.
    # The chosen alpha must be the same float32 value on every channel: alpha is a choice of bin (the divergences
    # agree to ~1e-15, the seeded data has no near tie) turned into a value by the same double-precision formula.
    torch.manual_seed(11)
    x = torch.randn(7, 50) * torch.linspace(0.1, 2.0, 7).unsqueeze(1)
    x[1, 3] = 9.0  # an outlier
    x[2] = torch.tensor([0.5, -0.25, 1.0] * 16 + [0.0, 0.0])  # three magnitudes: a sparse histogram
    x[5] = 0.0  # nothing to clip: alpha 0
    x[6, :45] = 0.0  # few values (a depthwise-like channel)
    bits, bins = 4, 256
    spec = GridSpec(bits, scheme=scheme, granularity="channel")
    levels = 2**bits if scheme == "unsigned" else 2 ** (bits - 1)
    start = max(levels, bins // 16)
    expected = []
    for row in x:
        mags = row.clamp(min=0) if scheme == "unsigned" else row.abs()
        top = float(mags.max())
        if top <= 0:
            expected.append(top)
            continue
        hist = torch.histc(mags.double(), bins=bins, min=0.0, max=top).numpy()
        ref = _reference_kl(hist, levels)
        cands = list(range(start, bins + 1))
        best = cands[int(np.argmin([ref[i] for i in cands]))]
        expected.append(min((best + 0.5) * (top / bins), top))
    assert torch.equal(clip_kl(x, spec, bins=bins), torch.tensor(expected, dtype=torch.float32))


def test_kl_on_a_constructed_histogram() -> None:
    # |x| histogram [50, 30, 10, 5, 0, 0, 0, 1] on [0, 8] (width 1), 2 bits: 2 levels per sign.
    # i = 2: P = [50, 46]/96, Q = [50, 30]/80 -> KL = .5208 ln(.5208/.625) + .4792 ln(.4792/.375) = 0.022495
    # i = 3: P = [50, 30, 16]/96, Q = [50, 20, 20]/90 (runs [0], [1, 2]) -> KL = 0.02497
    counts = [50, 30, 10, 5, 0, 0, 0]
    x = torch.cat([torch.full((c,), i + 0.5) for i, c in enumerate(counts)] + [torch.tensor([8.0])])
    hist = torch.histc(x.double(), bins=8, min=0.0, max=8.0)
    assert hist.tolist() == [50, 30, 10, 5, 0, 0, 0, 1]
    cands, kl = kl_divergences(hist, 2)
    p2, q2 = np.array([50, 46]) / 96, np.array([50, 30]) / 80
    p3, q3 = np.array([50, 30, 16]) / 96, np.array([50, 20, 20]) / 90
    assert math.isclose(float(kl[0]), float(np.sum(p2 * np.log(p2 / q2))), rel_tol=1e-12)
    assert math.isclose(float(kl[1]), float(np.sum(p3 * np.log(p3 / q3))), rel_tol=1e-12)
    assert math.isclose(float(kl[0]), 0.022495, abs_tol=1e-6)
    assert int(cands[int(torch.argmin(kl))]) == 2
    assert float(clip_kl(x, GridSpec(2), bins=8)) == 2.5  # (i* + 0.5) · width


def test_kl_clips_outliers_and_keeps_uniform_range() -> None:
    torch.manual_seed(7)
    body = torch.randn(20000) * 0.2
    x = torch.cat([body, torch.tensor([25.0])])
    assert float(clip_kl(x, GridSpec(4), bins=512)) < 2.0  # 8 levels per sign: i >= 8, α >= 0.41
    uniform = torch.rand(20000) * 2 - 1
    assert float(clip_kl(uniform, GridSpec(4), bins=512)) > 0.9
    # many levels for few bins: nothing to choose, α = max|x|
    assert float(clip_kl(uniform, GridSpec(8), bins=64)) == float(uniform.abs().max())


def test_kl_ignores_the_single_bin_candidates_near_zero() -> None:
    # no magnitude below 0.02: with i counted from `levels`, the candidate i = (first nonzero bin) + 1 keeps one bin
    # that Q matches exactly (KL = 0) and would clip everything to ~0.02; candidates start at bins/16 instead
    torch.manual_seed(8)
    mags = torch.rand(5000) * 0.98 + 0.02
    x = mags * torch.where(torch.rand(5000) < 0.5, -1.0, 1.0)
    hist = torch.histc(x.abs().double(), bins=2048, min=0.0, max=float(x.abs().max()))
    first = int(torch.nonzero(hist)[0])
    cands, kl = kl_divergences(hist, 8)
    assert 8 <= first < 128 and float(kl[cands == first + 1]) == 0.0  # the degenerate candidate
    assert float(clip_kl(x, GridSpec(4))) > 0.5


def test_choose_clip_dispatch_and_errors() -> None:
    x = torch.randn(10, 10)
    spec = GridSpec(4)
    assert torch.equal(choose_clip(x, spec, "lp", p=3.0), clip_lp(x, spec, p=3.0))
    assert torch.equal(choose_clip(x, spec, "aciq", distribution="gaussian"), clip_aciq(x, spec, "gaussian"))
    with pytest.raises(ConfigError, match="unknown"):
        choose_clip(x, spec, "percentile")
    with pytest.raises(ConfigError, match="no option"):
        choose_clip(x, spec, "mse", p=3.0)
    with pytest.raises(ConfigError, match="p of the Lp"):
        choose_clip(x, spec, "lp", p=0.0)
    with pytest.raises(ConfigError, match="distribution"):
        choose_clip(x, spec, "aciq", distribution="cauchy")
    with pytest.raises(ConfigError, match="affine"):
        choose_clip(x, GridSpec(4, scheme="affine"), "mse")
    with pytest.raises(ConfigError, match="bins"):
        choose_clip(x, spec, "kl", bins=1)
    with pytest.raises(QuantizationError):
        choose_clip(torch.tensor([1.0, float("nan")]), spec, "minmax")
