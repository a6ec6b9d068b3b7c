"""DKM (learnq/quantizers/dkm.py, learnq/clustering.py) and k-means palettization (learnq/ptq/kmeans.py): the soft
assignment and the centroid update against a hand computation, the gradient against finite differences, chunking
that changes nothing, hard assignment at eval equal to the exported palette, the k-means objective that never
increases, and the PTQ method end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import learnq
from learnq.clustering import attention, init_centroids, kmeans_pp, lloyd, soft_update, soft_weights
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.ptq import PTQ, quantize
from learnq.ptq.kmeans import palettize
from learnq.quantized import quantized_parameters

ONE = torch.zeros(3, dtype=torch.long)


def _hand_attention(xs, cs, tau):
    rows = []
    for x in xs:
        e = [math.exp(-abs(x - c) / tau) for c in cs]
        rows.append([v / sum(e) for v in e])
    return rows


def test_soft_assignment_and_centroid_update_by_hand():
    xs, cs, tau = [0.0, 1.0, 3.0], [0.0, 2.0], 0.7
    x = torch.tensor(xs, dtype=torch.float64).reshape(3, 1)
    c = torch.tensor(cs, dtype=torch.float64).reshape(1, 2, 1)
    a_hand = _hand_attention(xs, cs, tau)
    torch.testing.assert_close(attention(x, c, ONE, tau), torch.tensor(a_hand, dtype=torch.float64),
                               rtol=1e-10, atol=0)  # float64 exp and sums of 2-3 terms: rounding only
    new_hand = [sum(a_hand[i][j] * xs[i] for i in range(3)) / sum(a_hand[i][j] for i in range(3)) for j in range(2)]
    new = soft_update(x, c, ONE, tau, rows=2)  # two chunks: 2 rows + 1 row
    torch.testing.assert_close(new.reshape(-1), torch.tensor(new_hand, dtype=torch.float64), rtol=1e-10, atol=0)
    a_new = _hand_attention(xs, new_hand, tau)  # W̃ = A(W, C_new)·C_new
    w_hand = [sum(a_new[i][j] * new_hand[j] for j in range(2)) for i in range(3)]
    torch.testing.assert_close(soft_weights(x, new, ONE, tau, rows=1).reshape(-1),
                               torch.tensor(w_hand, dtype=torch.float64), rtol=1e-10, atol=0)


def test_vector_distance_is_euclidean_and_palettes_follow_their_groups():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    c = torch.tensor([[[0.0, 0.0], [3.0, 4.0]], [[3.0, 4.0], [0.0, 0.0]]], dtype=torch.float64)  # 2 groups
    a = attention(x, c, torch.tensor([0, 1]), tau=1.0)
    far = math.exp(-5.0) / (1 + math.exp(-5.0))  # ‖(3, 4)‖ = 5
    # row 0 against group 0's palette, row 1 against group 1's: each is entry 0 of its own palette
    torch.testing.assert_close(a, torch.tensor([[1 - far, far], [1 - far, far]],
                                               dtype=torch.float64), rtol=1e-10, atol=0)
    assert attention(x, c, torch.tensor([0, 0]), tau=1.0)[1, 1] == pytest.approx(1 - far, rel=1e-10)


def test_the_gradient_matches_finite_differences():
    """W -> A(W, C*)·C* with C* = one differentiable update from fixed centroids, in float64, chunks of 2 rows (the
    backward recomputes each chunk)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(7, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    c0 = torch.randn(2, 3, 2, dtype=torch.float64, generator=gen)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1])

    def f(w):
        c_star = soft_update(w, c0, groups, 0.5, rows=2)
        return soft_weights(w, c_star, groups, 0.5, rows=2)

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-7)


def test_one_vector_palette_uses_the_expanded_distance_with_the_same_values_and_gradient():
    """One palette of d > 1 vectors takes the matrix-product distance ‖c‖² - 2·c·w + ‖w‖²: equal to the
    difference form on hand values and in general (float64), and its gradient passes finite differences."""
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    c = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]], dtype=torch.float64)
    far = math.exp(-5.0) / (1 + math.exp(-5.0))  # ‖(3, 4)‖ = 5
    torch.testing.assert_close(attention(x, c, torch.tensor([0, 0]), tau=1.0),
                               torch.tensor([[1 - far, far], [far, 1 - far]], dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)  # float64; exact zero distances go through the 1e-24 floor
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(50, 4, dtype=torch.float64, generator=gen)
    cs = torch.randn(1, 16, 4, dtype=torch.float64, generator=gen)
    dist = (cs[0].unsqueeze(1) - w.unsqueeze(0)).pow(2).sum(-1).sqrt()  # (k, rows), the difference form
    ref = torch.softmax(-dist / 0.3, dim=0).t()
    # float64 cancellation in ‖c‖² + ‖w‖² - 2c·w of values ~1-10: ~1e-15 absolute, far below 1e-10
    torch.testing.assert_close(attention(w, cs, torch.zeros(50, dtype=torch.long), 0.3), ref, rtol=1e-10, atol=1e-12)
    wg = w[:7].clone().requires_grad_(True)
    g7 = torch.zeros(7, dtype=torch.long)

    def f(v):
        return soft_weights(v, soft_update(v, cs, g7, 0.5, rows=2), g7, 0.5, rows=2)

    assert torch.autograd.gradcheck(f, (wg,), eps=1e-6, atol=1e-7)


def test_chunking_changes_nothing_but_the_summation_order():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 1, generator=gen)
    c = torch.randn(1, 4, 1, generator=gen)
    g = torch.zeros(1000, dtype=torch.long)
    # float32 sums of 1000 terms in another grouping: relative differences of a few ulps
    torch.testing.assert_close(soft_update(x, c, g, 0.1, rows=7), soft_update(x, c, g, 0.1, rows=1000),
                               rtol=1e-5, atol=1e-6)
    # row-wise A·C: a 4-term dot product, by a matmul kernel that may block 7 and 1000 rows differently
    torch.testing.assert_close(soft_weights(x, c, g, 0.1, rows=7), soft_weights(x, c, g, 0.1, rows=1000),
                               rtol=1e-6, atol=1e-7)


def test_kmeans_pp_is_reproducible_and_picks_data_points():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(2))
    a = kmeans_pp(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, kmeans_pp(x, 4, torch.Generator().manual_seed(3)))
    assert all(bool((x == row).all(1).any()) for row in a)
    assert init_centroids(x, torch.zeros(200, dtype=torch.long), 1, 4, seed=3).shape == (1, 4, 2)


def test_lloyd_by_hand_and_the_objective_never_increases():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    c, history = lloyd(x, torch.tensor([[[0.0], [1.0]]]), torch.zeros(4, dtype=torch.long), iters=10)
    assert c.reshape(-1).tolist() == [0.5, 10.5] and history[-1] == 1.0  # {0, 1}, {10, 11}
    assert history[0] == 81.0 + 100.0  # seeds 0 and 1: 10 and 11 go to 1
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(4))
    for gran, dim in (("tensor", 1), ("channel", 2), ("group:96", 4)):
        qt, hist = palettize(w, 3, dim, Granularity.parse(gran), iters=20)
        assert all(b <= a * (1 + 1e-6) for a, b in zip(hist, hist[1:], strict=False)), hist
        assert hist[-1] < hist[0]
        err = float((qt.dequantize() - w).pow(2).sum())
        assert err == pytest.approx(hist[-1], rel=1e-4)  # the palettized tensor is the last assignment


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize(("bits", "dim", "gran"), [(1, 1, "tensor"), (2, 2, "channel"), (4, 4, "tensor")])
def test_dkm_trains_and_eval_is_the_hard_assignment(bits, dim, gran, tmp_path):
    model = _mlp()
    handle = learnq.prepare(model, learnq.DKM(bits=bits, dim=dim, granularity=gran))
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    for name, qt in quantized_parameters(model):
        q = handle.quantizers[name]
        assert qt.palette.shape == (Granularity.parse(gran).num_groups(qt.shape), 2**bits, dim)
        rows = qt.granularity.view(qt.dequantize())
        for r in range(rows.shape[0]):  # at most k distinct vectors per palette group
            assert torch.unique(rows[r].reshape(-1, dim), dim=0).shape[0] <= 2**bits
        w = q.current_input().detach().reshape(-1, dim)
        nearest_by_hand = (w[:, None, :] - q.centroids[q.groups]).pow(2).sum(-1).argmin(1)
        assert torch.equal(qt.index_codes().long(), nearest_by_hand)
        assert torch.equal(model[int(name[0])].weight, qt.dequantize())
    with torch.no_grad():
        before = model(x)
        learnq.save(model, tmp_path / "m.safetensors")
        assert torch.equal(learnq.load(tmp_path / "m.safetensors", _mlp()).eval()(x), before)


def test_a_tiny_temperature_gives_the_hard_assignment_in_training():
    model = _mlp()
    handle = learnq.prepare(model, learnq.DKM(bits=2, tau=1e-6, iters=0))
    q = handle.quantizers["0.weight"]
    w = model[0].parametrizations.weight.original
    model.train()
    soft = q(w)
    model.eval()
    # the soft update from the k-means++ seeds moves the centroids to their clusters' means (A one-hot), and the
    # weights to those means: the eval forward of the updated centroids; float32 means of ~50 values
    torch.testing.assert_close(soft.detach(), q(w).detach(), rtol=1e-5, atol=1e-6)


def test_dkm_options_are_checked():
    with pytest.raises(ConfigError, match="DKM.bits"):
        learnq.DKM(bits=9)
    with pytest.raises(ConfigError, match="DKM.granularity"):
        learnq.DKM(granularity="column")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"cannot palettize '0.weight' with dim=4"):
        learnq.prepare(conv, learnq.DKM(bits=2, dim=4))  # 18 values


def test_kmeans_ptq_palettizes_every_selected_weight():
    model = _mlp().eval()
    x = torch.randn(64, 12)
    result = quantize(model, x, PTQ(method="kmeans", wbits=2, abits=32, granularity="tensor",
                                    options={"dim": 2}), progress=False)
    qts = dict(quantized_parameters(result.model))
    assert set(qts) == {"0.weight", "2.weight"}
    for qt in qts.values():
        assert qt.method == "kmeans" and qt.palette.shape == (1, 4, 2)
        assert torch.unique(qt.dequantize().reshape(-1, 2), dim=0).shape[0] <= 4
    for row in result.extra["kmeans"]:
        assert row["objective"] <= row["objective_init"]
    with pytest.raises(ConfigError, match="at most 8 bits"):
        quantize(_mlp().eval(), x, PTQ(method="kmeans", wbits=9, abits=32), progress=False)
    for flag in ("bias_correction", "variance_correction"):  # a palette has no steps to correct: refused, not ignored
        with pytest.raises(ConfigError, match="does not apply to a palette"):
            quantize(_mlp().eval(), x, PTQ(method="kmeans", wbits=2, abits=32, **{flag: True}), progress=False)


def test_dkm_true_size_is_the_indices_and_the_palette_the_file_stores(tmp_path):
    # per-channel palettes of 2-vectors in float16 (learnq/quantizers/palettized.py, shared with iPQ): 8 rows x 12
    # inputs = 48 vectors of 2 values at 3 bits, plus 8 palettes of 2^3 x 2 float16 values
    model = nn.Sequential(nn.Linear(12, 8))
    handle = learnq.prepare(model, learnq.DKM(bits=3, dim=2, granularity="channel", palette_dtype="float16"))
    q = handle.quantizers["0.weight"]
    assert q.true_size_bits() == 48 * 3 + 8 * 8 * 2 * 16
    model.eval()
    learnq.save(model, tmp_path / "m.safetensors")
    loaded = learnq.load(tmp_path / "m.safetensors", nn.Sequential(nn.Linear(12, 8)))
    qt = dict(quantized_parameters(loaded))["0.weight"]
    assert qt.palette.shape == (8, 8, 2) and qt.palette.dtype == torch.float16
    assert qt.code_bits() + qt.palette.numel() * 16 == q.true_size_bits()
    assert torch.equal(qt.palette, q.palette())  # the stored LUT is the quantizer's palette as stored
