"""Step selection for post-training quantization: the clipping value α of each group of a tensor.

Every rule returns α per group, a float32 tensor of shape ``(spec.granularity.num_groups(x.shape),)``, for
:func:`learnq.grid.compute_params` (``clip=α``): the grid then covers [-α, α] (``symmetric``, ``lapq``) or [0, α]
(``unsigned``, post-ReLU activations). α never exceeds the group's own range (max|x|, or max x for ``unsigned``):
clipping beyond the largest value only coarsens the grid.

* ``minmax``  α = max|x| (Gong et al. 2018, the ℓ∞ rule of LAPQ seeds/001 §2).
* ``lp``      α_p = argmin_α mean(|Q_α(x) - x|^p), LAPQ seeds/001 §4.1 Eq. (12) (METHODS.md §2, step 1). Bounded
              scalar search on (0, max|x|]: a grid of ``grid`` candidates, then a golden-section refinement inside
              the bracket around the best candidate (the error is piecewise smooth but not unimodal, so a pure
              Brent search as in the reference code can stop in a local minimum; the grid first avoids that).
              At p = 2 on a grid with no more levels than a group has values (activation samples, most weight
              groups), the errors come exactly from the values sorted once (:mod:`learnq.sorted_mse`, O(levels·log n)
              per candidate instead of O(n)) and the refinement spends the same number of evaluations as
              successive vectorized grids in the bracket (:func:`_refine_grids`).
* ``mse``     ``lp`` with p = 2 (MMSE).
* ``aciq``    Banner et al. (ACIQ, arXiv:1810.05723), as summarised in seeds/002 supplement §9.1 Eq. (1)-(4) and
              METHODS.md §2: α = k·σ (Gaussian) or α = k·b (Laplace, b = mean|x - mean x|), k from the tables in
              METHODS.md for 1..8 bits; a post-ReLU (``unsigned``) grid of b bits uses the signed k of b + 1 bits.
              Outside the tables k is the minimiser of the same error model, truncation + α²/(3·4^M)
              (:func:`aciq_k`), which reproduces the tables to 0.01.
* ``kl``      TensorRT's calibration (Migacz 2017, "8-bit inference with TensorRT"): histogram of |x| with
              ``bins`` bins on [0, max|x|]; for each candidate i of kept bins the reference P (outliers folded into
              its last bin) is compared with its quantization Q onto the grid's levels per sign (2^(b-1) for signed
              grids, 2^b for ``unsigned``) by KL(P‖Q) after the reference code's ε-smoothing, for i from
              max(levels, bins/16) (TensorRT's 128 of 2048 bins) to ``bins``; α = (i* + 0.5)·width, capped at
              max|x|. All groups are searched at once on their histograms' nonzero bins (the zero bins add
              exact 0 terms after the smoothing), the same α as the per-group dense loop.

``choose_clip(x, spec, method, **options)`` dispatches by name (``CLIP_METHODS``); unknown names or options raise
ConfigError. The affine scheme has two ends and no single α: only ``minmax`` (α = max x) accepts it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from learnq.errors import ConfigError, QuantizationError
from learnq.grid import GridSpec, check_tensor
from learnq.kl_histogram import kl_divergences, kl_divergences_rows
from learnq.sorted_mse import SortedRows, levels

# ACIQ clipping factors k (METHODS.md §2; Banner et al.): signed grids, by bits.
ACIQ_GAUSS: dict[int, float] = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}
ACIQ_LAPLACE: dict[int, float] = {1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
DISTRIBUTIONS = ("gaussian", "laplace")

_CHUNK = 1 << 22  # elements per block of the Lp search (bounds memory: candidates x values)
#: interior points of each refinement grid of the MMSE search from sorted values (:func:`clip_lp`, p = 2)
REFINE_POINTS = 20


def scale_offset(alpha: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Step and offset of ``spec``'s grid for clipping value(s) ``alpha`` (as :func:`learnq.grid.compute_params`)."""
    if spec.scheme == "lapq" or spec.sign_grid:
        return 2 * alpha / (2**spec.bits - 1), -alpha
    if spec.scheme == "unsigned":
        return alpha / (2**spec.bits - 1), torch.zeros_like(alpha)
    if spec.scheme == "symmetric":
        return alpha / spec.qrange()[1], torch.zeros_like(alpha)
    raise ConfigError(f"scheme {spec.scheme!r} has no single clipping value; use 'symmetric', 'lapq' or 'unsigned'")


def fake_quant_alpha(x: torch.Tensor, alpha: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Q_α(x): ``x`` on ``spec``'s grid clipped at ``alpha`` (broadcast against ``x``); α = 0 gives 0."""
    scale, offset = scale_offset(alpha, spec)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    t = (x - offset) / safe
    t = torch.floor(t) if spec.rounding == "floor" else torch.round(t)
    qmin, qmax = spec.qrange()
    out = t.clamp(qmin, qmax) * safe + offset
    return torch.where(scale > 0, out, torch.zeros_like(out))


def _rows(x: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, mask)``: the (n_groups, group_len) float32 view of ``x`` and its real-entry mask."""
    check_tensor(x, "the tensor to clip")
    g = spec.granularity
    rows = g.view(x.detach().float())
    return rows, g.group_mask(tuple(x.shape), device=rows.device)


def _top(rows: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """The largest useful α per group: max|x|, or max(x, 0) for the unsigned grid."""
    if spec.scheme == "unsigned":
        return rows.max(dim=1).values.clamp(min=0)
    return rows.abs().max(dim=1).values


def _check_scheme(spec: GridSpec, method: str) -> None:
    if not isinstance(spec, GridSpec):
        raise ConfigError(f"spec must be a learnq.grid.GridSpec, got {type(spec).__name__}")
    if spec.scheme == "affine":
        raise ConfigError(f"clipping method {method!r} needs a grid with one clipping value α (scheme 'symmetric', "
                          "'lapq' or 'unsigned'); the affine grid has two ends: use clip 'minmax' or another scheme")


def clip_minmax(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """α = max|x| per group (max x for the unsigned and affine grids)."""
    rows, _ = _rows(x, spec)
    if spec.scheme == "affine":
        return rows.max(dim=1).values.contiguous()
    return _top(rows, spec).contiguous()


def lp_error(x: torch.Tensor, alpha: torch.Tensor | float, spec: GridSpec, p: float = 2.0) -> torch.Tensor:
    """mean(|Q_α(x) - x|^p) per group for the given α per group (the objective of :func:`clip_lp`)."""
    rows, mask = _rows(x, spec)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=rows.device).reshape(-1, 1).expand(rows.shape[0], 1)
    err = (fake_quant_alpha(rows, a, spec) - rows).abs().pow(p) * mask
    return err.sum(dim=1) / mask.sum(dim=1)


def _lp_batch(rows: torch.Tensor, mask: torch.Tensor, cand: torch.Tensor, spec: GridSpec,
              ps: Sequence[float], sorted_rows: tuple[SortedRows, tuple[float, float]] | None = None
              ) -> list[torch.Tensor]:
    """Errors of candidates ``cand`` (n_groups, K) on ``rows`` (n_groups, L), one (n_groups, K) tensor per norm of
    ``ps``. With ``sorted_rows`` (the same rows sorted once, :class:`learnq.sorted_mse.SortedRows`, and the grid's
    step and offset at α = 1) the p = 2 errors come from its exact cell sums; the others from the quantized values,
    chunked over K, computed once for all those norms."""
    n, width = rows.shape
    direct = [p for p in ps if sorted_rows is None or p != 2.0]
    step = max(1, _CHUNK // max(1, n * width))
    parts: list[list[torch.Tensor]] = [[] for _ in direct]
    count = mask.sum(dim=1, keepdim=True)
    for start in range(0, cand.shape[1] if direct else 0, step):
        a = cand[:, start:start + step].unsqueeze(2)  # (n, k, 1)
        diff = (fake_quant_alpha(rows.unsqueeze(1), a, spec) - rows.unsqueeze(1)).abs()
        for j, p in enumerate(direct):
            parts[j].append((diff.pow(p) * mask.unsqueeze(1)).sum(dim=2) / count)
    errs = {p: torch.cat(o, dim=1) for p, o in zip(direct, parts, strict=True)}
    if sorted_rows is not None and 2.0 in ps:
        errs[2.0] = sorted_rows[0].mse(cand, spec, sorted_rows[1])
    return [errs[p] for p in ps]


def _refine_golden(rows: torch.Tensor, mask: torch.Tensor, spec: GridSpec, p: float, lo: torch.Tensor,
                   hi: torch.Tensor, alpha: torch.Tensor, best_err: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` golden-section steps on [lo, hi] per group (both points evaluated each step); the best α seen."""
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(steps):
        span = ratio * (hi - lo)
        cd = torch.stack([hi - span, lo + span], 1)  # the golden-section points c < d
        e = _lp_batch(rows, mask, cd, spec, [p])[0]
        (ec, ed), (c, d) = e.unbind(1), cd.unbind(1)
        left = ec <= ed
        hi = torch.where(left, d, hi)
        lo = torch.where(left, lo, c)
        least, which = e.min(dim=1)  # c on a tie
        better = least < best_err
        alpha = torch.where(better, cd.gather(1, which.unsqueeze(1)).squeeze(1), alpha)
        best_err = torch.where(better, least, best_err)
    return alpha


def _refine_grids(fast: SortedRows, spec: GridSpec, unit: tuple[float, float], lo: torch.Tensor, hi: torch.Tensor,
                  alpha: torch.Tensor, best_err: torch.Tensor, steps: int) -> torch.Tensor:
    """The MMSE refinement from sorted values: the 2·``steps`` evaluations of as many golden-section steps, spent as
    successive grids of :data:`REFINE_POINTS` interior points, each on ±1 spacing around the best point so far (one
    vectorized evaluation per grid instead of a step's dozens of small tensor operations; at the defaults 3 grids,
    final spacing 2·(2/21)²/21 ≈ 9e-4 of the grid step top/grid; 30 golden-section steps: 2·0.618³⁰ ≈ 1e-6). The
    best α seen."""
    t = torch.arange(1, REFINE_POINTS + 1, dtype=torch.float32, device=lo.device) / (REFINE_POINTS + 1)
    for _ in range(-(-2 * steps // REFINE_POINTS)):
        width = (hi - lo).unsqueeze(1)
        cand = lo.unsqueeze(1) + width * t  # (n, points)
        e = fast.mse(cand, spec, unit)
        least, which = e.min(dim=1)
        better = least < best_err
        alpha = torch.where(better, cand.gather(1, which.unsqueeze(1)).squeeze(1), alpha)
        best_err = torch.where(better, least, best_err)
        gap = width.squeeze(1) / (REFINE_POINTS + 1)
        lo, hi = (alpha - gap).clamp(min=0), alpha + gap
    return alpha


def clip_lp(x: torch.Tensor, spec: GridSpec, p: float = 2.0, *, grid: int = 100, refine: int = 30) -> torch.Tensor:
    """α_p = argmin_α mean(|Q_α(x) - x|^p) per group, searched on (0, max|x|] (LAPQ Eq. 12).

    ``grid`` evenly spaced candidates α_k = k·max/grid, then ``refine`` golden-section steps inside
    [α_(k-1), α_(k+1)] around the best one (at p = 2 from sorted values: the same 2·``refine`` evaluations as
    successive grids, :func:`_refine_grids`); the result is never worse than the best grid candidate.
    """
    return clip_lp_many(x, spec, [p], grid=grid, refine=refine)[0]


def clip_lp_many(x: torch.Tensor, spec: GridSpec, ps: Sequence[float], *, grid: int = 100,
                 refine: int = 30) -> list[torch.Tensor]:
    """:func:`clip_lp` of ``x`` at every norm of ``ps`` (LAPQ's sweep over p, §4.1), the same α's bit for bit: the
    grid candidates do not depend on p, so their quantization errors are computed once for all norms."""
    _check_scheme(spec, "lp")
    for p in ps:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise ConfigError(f"p of the Lp clipping must be a finite number > 0, got {p!r}")
    for name, value, least in (("grid", grid, 2), ("refine", refine, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} of the Lp clipping must be an integer >= {least}, got {value!r}")
    rows, mask = _rows(x, spec)
    top = _top(rows, spec)
    live = top > 0
    if not bool(live.any()):
        return [top.contiguous() for _ in ps]
    ks = torch.arange(1, grid + 1, dtype=torch.float32, device=rows.device) / grid
    cand = top.unsqueeze(1) * ks  # (n, grid)
    norms = [float(p) for p in ps]
    # p = 2 (MMSE) from one sort when the grid has fewer levels than a group has values (learnq.sorted_mse)
    fast = None
    if 2.0 in norms and levels(spec) <= rows.shape[1]:
        unit = scale_offset(torch.ones((), dtype=torch.float64), spec)
        fast = SortedRows(rows, mask), (float(unit[0]), float(unit[1]))
    out = []
    for p, errs in zip(norms, _lp_batch(rows, mask, cand, spec, norms, fast), strict=True):
        best = errs.argmin(dim=1)
        idx = torch.arange(rows.shape[0], device=rows.device)
        alpha, best_err = cand[idx, best], errs[idx, best]
        lo = top * (best.float() / grid)  # k-1 (0 for the first candidate)
        hi = top * ((best + 2).clamp(max=grid).float() / grid)
        if fast is not None and p == 2.0:
            alpha = _refine_grids(fast[0], spec, fast[1], lo, hi, alpha, best_err, refine)
        else:
            alpha = _refine_golden(rows, mask, spec, p, lo, hi, alpha, best_err, refine)
        out.append(torch.where(live, alpha, top).contiguous())
    return out


def clip_mse(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Minimum mean-squared-error clipping: :func:`clip_lp` with p = 2."""
    return clip_lp(x, spec, p=2.0)


@lru_cache(maxsize=64)
def aciq_k(bits: int, distribution: str = "laplace") -> float:
    """ACIQ factor k for a signed grid of ``bits`` bits: the minimiser of the expected error of a unit-scale
    distribution, ``2·E[(X-α)²; X>α] + α²/(3·4^bits)`` (seeds/002 supplement Eq. 4)."""
    from scipy import optimize, stats

    rounding = 1.0 / (3.0 * 4.0**bits)
    if distribution == "gaussian":
        def err(a: float) -> float:
            return 2 * ((1 + a * a) * stats.norm.sf(a) - a * stats.norm.pdf(a)) + a * a * rounding
    else:
        def err(a: float) -> float:
            return 2 * math.exp(-a) + a * a * rounding
    return float(optimize.minimize_scalar(err, bounds=(1e-3, 60.0), method="bounded",
                                          options={"xatol": 1e-6}).x)


def aciq_factor(bits: int, distribution: str, unsigned: bool) -> float:
    """k of the tables (signed bits, or bits + 1 for a post-ReLU grid), else :func:`aciq_k`."""
    table = ACIQ_GAUSS if distribution == "gaussian" else ACIQ_LAPLACE
    b = bits + 1 if unsigned else bits
    return table[b] if b in table else aciq_k(b, distribution)


def clip_aciq(x: torch.Tensor, spec: GridSpec, distribution: str = "laplace") -> torch.Tensor:
    """ACIQ analytical clipping: α = k·σ (``gaussian``) or k·b, b = mean|x - mean x| (``laplace``), per group,
    capped at the group's max|x|."""
    _check_scheme(spec, "aciq")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"ACIQ distribution {distribution!r} is unknown; use 'gaussian' or 'laplace'")
    rows, mask = _rows(x, spec)
    count = mask.sum(dim=1)
    mean = (rows * mask).sum(dim=1) / count
    dev = (rows - mean.unsqueeze(1)) * mask
    if distribution == "gaussian":
        spread = (dev.pow(2).sum(dim=1) / count).sqrt()
    else:
        spread = dev.abs().sum(dim=1) / count
    k = aciq_factor(spec.bits, distribution, spec.scheme == "unsigned")
    return torch.minimum(k * spread, _top(rows, spec)).contiguous()


def clip_kl(x: torch.Tensor, spec: GridSpec, bins: int = 2048) -> torch.Tensor:
    """TensorRT KL-divergence threshold per group on the histogram of |x| (of max(x, 0) for the unsigned grid).

    Candidates keep i >= max(levels, bins/16) bins (TensorRT's 128 of 2048): below that, a kept histogram whose only
    nonzero bin is its last one (every value folded in as an outlier) is matched exactly by Q (KL = 0), which would
    clip a tensor whose smallest magnitude is far from zero (sparse weights, normalised images) to nearly nothing.
    All groups are searched together (:func:`kl_divergences_rows`).
    """
    _check_scheme(spec, "kl")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ConfigError(f"bins of the KL clipping must be an integer >= 2, got {bins!r}")
    rows, mask = _rows(x, spec)
    top = _top(rows, spec)
    levels = 2**spec.bits if spec.scheme == "unsigned" else 2 ** (spec.bits - 1)
    start = max(levels, bins // 16)
    alpha = top.clone()
    live = [g for g in range(rows.shape[0]) if float(top[g]) > 0]
    if start >= bins or not live:
        return alpha.contiguous()
    mags = rows.clamp(min=0) if spec.scheme == "unsigned" else rows.abs()
    hists = torch.stack([torch.histc(mags[g][mask[g]].double().cpu(), bins=bins, min=0.0, max=float(top[g]))
                         for g in live])
    cands, kl = kl_divergences_rows(hists, levels, start)
    best = cands[kl.argmin(dim=1)].double()
    tops = top[live].double().cpu()
    chosen = torch.minimum((best + 0.5) * (tops / bins), tops)
    alpha[torch.tensor(live, device=alpha.device)] = chosen.to(alpha)
    return alpha.contiguous()


CLIP_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "minmax": clip_minmax,
    "lp": clip_lp,
    "mse": clip_mse,
    "aciq": clip_aciq,
    "kl": clip_kl,
}


def clip_options(method: str) -> list[str]:
    """The keyword options clipping ``method`` accepts."""
    fn = get_clip(method)
    return [name for name in list(inspect.signature(fn).parameters)[2:]]


def get_clip(method: str) -> Callable[..., torch.Tensor]:
    """The clipping function registered as ``method``; ConfigError listing the known ones otherwise."""
    if not isinstance(method, str) or method not in CLIP_METHODS:
        raise ConfigError(f"clipping method {method!r} is unknown; use one of {', '.join(CLIP_METHODS)}")
    return CLIP_METHODS[method]


def choose_clip(x: torch.Tensor, spec: GridSpec, method: str, **options: object) -> torch.Tensor:
    """α per group of ``x`` by clipping rule ``method`` (``CLIP_METHODS``) with its ``options``."""
    fn = get_clip(method)
    known = clip_options(method)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"clipping method {method!r} has no option(s) {', '.join(unknown)}; "
                          f"its options are: {', '.join(known) if known else 'none'}")
    alpha = fn(x, spec, **options)
    if not bool(torch.isfinite(alpha).all()):
        raise QuantizationError(f"clipping method {method!r} gave a non-finite α; check the tensor")
    return alpha


__all__ = ["ACIQ_GAUSS", "ACIQ_LAPLACE", "CLIP_METHODS", "DISTRIBUTIONS", "aciq_factor", "aciq_k", "choose_clip",
           "clip_aciq", "clip_kl", "clip_lp", "clip_lp_many", "clip_minmax", "clip_mse", "clip_options",
           "fake_quant_alpha", "get_clip", "kl_divergences", "kl_divergences_rows", "lp_error", "scale_offset"]
