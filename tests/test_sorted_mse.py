"""Tests for learnq.sorted_mse (the MSE of many clipping values from one sort) and the MMSE search of
learnq.clipping that uses it: the formula against a hand computation and a float64 direct evaluation, the chosen α
against the previous exhaustive search (every grid candidate on all the values, then golden-section steps)."""

from __future__ import annotations

import math

import pytest
import torch

from learnq.clipping import clip_lp, clip_lp_many, clip_mse, lp_error, scale_offset
from learnq.grid import GridSpec
from learnq.sorted_mse import SortedRows, levels


def _unit(spec: GridSpec) -> tuple[float, float]:
    a, b = scale_offset(torch.ones((), dtype=torch.float64), spec)
    return float(a), float(b)


def _mse64(x: torch.Tensor, alpha: float, spec: GridSpec) -> float:
    """mean((Q_α(x) - x)²) computed directly in float64 (x: 1-D)."""
    step, offset = scale_offset(torch.tensor(alpha, dtype=torch.float64), spec)
    x = x.double()
    if float(step) == 0:
        return float((x * x).mean())
    t = (x - offset) / step
    t = torch.floor(t) if spec.rounding == "floor" else torch.round(t)
    qmin, qmax = spec.qrange()
    return float(((t.clamp(qmin, qmax) * step + offset - x) ** 2).mean())


def _old_search(x: torch.Tensor, spec: GridSpec, grid: int = 100, refine: int = 30) -> float:
    """The exhaustive MMSE search learnq used before (one tensor): the error of every grid candidate k·top/grid on
    all the values, then ``refine`` golden-section steps in [α_(k-1), α_(k+1)] (here in float64)."""
    top = float(x.max().clamp(min=0)) if spec.scheme == "unsigned" else float(x.abs().max())
    cands = [top * k / grid for k in range(1, grid + 1)]
    errs = [_mse64(x, a, spec) for a in cands]
    k = min(range(grid), key=errs.__getitem__)
    best, best_err = cands[k], errs[k]
    lo, hi = top * k / grid, top * min(k + 2, grid) / grid
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(refine):
        c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        ec, ed = _mse64(x, c, spec), _mse64(x, d, spec)
        hi, lo = (d, lo) if ec <= ed else (hi, c)
        for a, e in ((c, ec), (d, ed)):
            if e < best_err:
                best, best_err = a, e
    return best


def test_error_formula_by_hand() -> None:
    # unsigned 2-bit grid clipped at α = 1.5: Δ = 0.5, levels 0, 0.5, 1, 1.5; no value on an edge
    x = torch.tensor([[0.125, 0.5, 0.625, 1.375, -0.25, 2.0]])
    spec = GridSpec(2, scheme="unsigned")
    # 0.125 -> 0, 0.5 -> 0.5, 0.625 -> 0.5, 1.375 -> 1.5, -0.25 -> 0 (clamp), 2.0 -> 1.5 (clipped)
    by_hand = (0.125**2 + 0 + 0.125**2 + 0.125**2 + 0.25**2 + 0.5**2) / 6  # = 0.359375 / 6
    sr = SortedRows(x, torch.ones_like(x, dtype=torch.bool))
    got = sr.mse(torch.tensor([[1.5, 0.0]]), spec, _unit(spec))
    # dyadic values: every sum is exact in float64 except the final cancellation (~1e-16 of the terms)
    torch.testing.assert_close(got, torch.tensor([[by_hand, float((x.double() ** 2).mean())]], dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)
    assert float(lp_error(x, 1.5, spec)) == pytest.approx(by_hand, rel=1e-6)  # the direct float32 evaluation


@pytest.mark.parametrize("spec", [GridSpec(8, scheme="unsigned"), GridSpec(4), GridSpec(3, scheme="lapq"),
                                  GridSpec(4, rounding="floor"), GridSpec(4, restricted=True),
                                  GridSpec(1, scheme="symmetric")], ids=str)
def test_error_matches_direct_float64_evaluation(spec: GridSpec) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4096, generator=g) * 2
    top = float(x.abs().max())
    alphas = torch.rand(1, 50, generator=g, dtype=torch.float64).float() * top
    got = SortedRows(x, torch.ones_like(x, dtype=torch.bool)).mse(alphas, spec, _unit(spec))
    want = torch.tensor([[_mse64(x[0], float(a), spec) for a in alphas[0]]], dtype=torch.float64)
    # Differences: float64 rounding of sums whose terms cancel (relative ~12·(α/Δ)²·2⁻⁵³ <= 1e-10 here) and edges
    # computed in float32 (a value within float32 rounding of an edge may change cell; its two errors differ by
    # ~Δ·2⁻²⁴·α, relative ~1e-7 / n of the total): 1e-6 relative bounds both.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_padded_groups_and_per_channel_rows() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 700, generator=g) * torch.tensor([[0.1], [1.0], [5.0]])
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 500:] = False  # a padded group: its last 200 entries are not values
    spec = GridSpec(4)
    alphas = torch.tensor([[0.05, 0.2], [1.0, 2.5], [3.0, 10.0]])
    got = SortedRows(x, mask).mse(alphas, spec, _unit(spec))
    rows = [x[0], x[1, :500], x[2]]
    want = torch.tensor([[_mse64(r, float(a), spec) for a in alphas[i]] for i, r in enumerate(rows)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)  # as above


def _samples() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    n = 8192
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return {"gaussian": torch.randn(n, generator=g), "relu-gaussian": torch.randn(n, generator=g).relu(),
            "laplace": (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float(),
            "uniform": torch.rand(n, generator=g),
            "student-t2": (torch.randn(n, generator=g) / (torch.randn(n, 2, generator=g).pow(2).mean(1)).sqrt())}


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", ["unsigned", "symmetric"])
def test_chosen_clip_matches_the_old_exhaustive_search(bits: int, scheme: str) -> None:
    spec = GridSpec(bits, scheme=scheme)
    for name, x in _samples().items():
        assert levels(spec) <= x.numel()  # the sorted path is the one taken
        new = float(clip_mse(x, spec))
        old = _old_search(x, spec)
        e_new, e_old = _mse64(x, new, spec), _mse64(x, old, spec)
        top = float(x.max()) if scheme == "unsigned" else float(x.abs().max())
        # Both search the same 100 candidates with errors that agree to ~1e-7 (previous test) and refine inside the
        # bracket [α_(k-1), α_(k+1)] around the best one: the old by golden-section steps, which stop in a local
        # minimum of the piecewise-smooth error, the new by vectorized grids. So α stays in that bracket (2·top/100
        # wide) and the error is the old one's up to the refinement's resolution: observed within 2e-7 relative at
        # round-to-nearest on these samples (and lower in about half of them); 1e-5 leaves room for other CPUs.
        assert abs(new - old) <= 0.02 * top + 1e-6, (name, new, old)
        assert e_new <= e_old * (1 + 1e-5), (name, e_new, e_old)


def test_never_worse_than_the_best_grid_candidate_and_floor_rounding() -> None:
    for spec in (GridSpec(4, rounding="floor"), GridSpec(3, scheme="lapq"), GridSpec(8, scheme="unsigned")):
        for name, x in _samples().items():
            top = float(x.max()) if spec.scheme == "unsigned" else float(x.abs().max())
            if top <= 0:
                continue
            grid_best = min(_mse64(x, top * k / 100, spec) for k in range(1, 101))
            e_new = _mse64(x, float(clip_mse(x, spec)), spec)
            # the search keeps the best point it evaluated; its own error values agree with float64 to 1e-6
            assert e_new <= grid_best * (1 + 1e-6), (str(spec), name)


def test_many_norms_share_the_p2_result_bit_for_bit_and_small_groups_use_the_direct_path() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 300, generator=g)
    spec = GridSpec(4, granularity="channel")
    many = clip_lp_many(x, spec, [1.0, 2.0, 3.0])
    assert torch.equal(many[1], clip_lp(x, spec, p=2.0))  # same code, same shapes
    # 8 bits on groups of 40 values: more levels than values, the direct evaluation (golden-section refinement)
    small = torch.randn(5, 40, generator=g)
    spec8 = GridSpec(8, granularity="channel")
    assert levels(spec8) > small.shape[1]
    alpha = clip_mse(small, spec8)
    for i in range(5):
        e = _mse64(small[i], float(alpha[i]), GridSpec(8))
        assert e <= _mse64(small[i], _old_search(small[i], GridSpec(8)), GridSpec(8)) * (1 + 1e-5)


def test_zero_rows_and_all_negative_unsigned_rows() -> None:
    x = torch.stack([torch.zeros(300), -torch.rand(300), torch.rand(300)])
    alpha = clip_mse(x, GridSpec(4, scheme="unsigned", granularity="channel"))
    assert alpha[0] == 0 and alpha[1] == 0 and 0 < alpha[2] <= x[2].max()


def test_count_below_is_torch_searchsorted() -> None:
    # numpy's searchsorted on the CPU: integer counts, so equal to torch's exactly; ties with an edge (left side:
    # not counted), +inf padding of short groups, several rows and edges in any order
    from learnq.sorted_mse import _count_below

    g = torch.Generator().manual_seed(3)
    rows = torch.round(torch.randn(3, 500, generator=g) * 8) / 8  # many values exactly on the edges below
    rows[1, 450:] = torch.inf
    rows = rows.sort(dim=1).values
    edges = torch.cat([torch.arange(-40, 41).float() / 16, torch.randn(200, generator=g)]).repeat(3, 1)
    edges[2] = edges[2].flip(0)
    got = _count_below(rows, edges)
    assert got.dtype == torch.int64
    assert torch.equal(got, torch.searchsorted(rows, edges, side="left"))
    assert not torch.equal(got, torch.searchsorted(rows, edges, side="right"))  # the ties are there
