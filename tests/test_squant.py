"""SQuant (Guo et al. 2022): kernel and channel flips of the diagonal-Hessian decomposition."""

import itertools

import torch
from torch import nn

import learnq
from learnq.granularity import Granularity
from learnq.grid import GridSpec
from learnq.ptq import quantize
from learnq.ptq.squant import objective_terms, squant_round, squant_weight


def test_kernel_flip_hand_computation():
    # one kernel of 4: x = 10.4, 20.3, 30.2, 40.1 -> nearest 10, 20, 30, 40, e = -0.4, -0.3, -0.2, -0.1 (sum -1.0)
    # one flip up, the cheapest (largest |e|): 10.4 -> 11 (e = 0.6); kernel sum 0.0
    x = torch.tensor([10.4, 20.3, 30.2, 40.1], dtype=torch.float64).reshape(1, 1, 4)
    codes, flips = squant_round(x, -128, 127, channel=False)
    assert codes.reshape(-1).tolist() == [11.0, 20.0, 30.0, 40.0]
    assert flips == {"kernel": 1, "channel": 0}


def test_kernel_flips_are_the_cheapest_that_meet_the_constraint():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 6, generator=gen, dtype=torch.float64) * 8 - 4
    codes, _ = squant_round(x, -8, 7, channel=False)
    e = (codes - x).reshape(-1)
    nearest = torch.round(x).reshape(-1)
    best = None
    for ups in itertools.product((-1, 0, 1), repeat=6):  # every rounding within one step of nearest
        q = nearest + torch.tensor(ups, dtype=torch.float64)
        if (q - x.reshape(-1)).abs().max() >= 1 or abs(float((q - x.reshape(-1)).sum())) > 0.5:
            continue
        cost = float(((q - x.reshape(-1)) ** 2).sum())
        best = cost if best is None else min(best, cost)
    assert abs(float(e.sum())) <= 0.5
    assert abs(float((e ** 2).sum()) - best) < 1e-12  # the same elements (float64 sums in another order)


def test_constraints_and_objective_on_a_conv_weight():
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3)
    spec = GridSpec(bits=4, scheme="symmetric", granularity=Granularity.parse("channel"))
    qt, info = squant_weight(w, spec)
    scale = qt.scale.reshape(-1, 1, 1, 1)
    e = qt.codes.double() - w.double() / scale.double()
    ksum, csum = e.sum(dim=(2, 3)), e.sum(dim=(1, 2, 3))
    assert float(ksum.abs().max()) <= 1.0 + 1e-9  # kernels within ±1 after the channel step (±1/2 before it)
    assert float(csum.abs().max()) <= 0.5 + 1e-9
    assert float(e.abs().max()) < 1.0  # never more than one step from the weight
    near, sq = info["nearest"], info["squant"]
    assert info["kernel"] > 0 and info["channel"] > 0
    assert sq["K"] < 0.5 * near["K"] and sq["C"] < 0.1 * near["C"]
    assert near["E"] < sq["E"]  # the price: nearest rounding is the minimum of E alone
    # objective_terms of what squant_weight reported is what the codes give
    assert abs(objective_terms(e)["C"] - sq["C"]) < 1e-6 * max(1.0, sq["C"])
    # the kernel stage alone: every kernel within ±1/2
    codes_k, _ = squant_round(w / scale, -8, 7, channel=False)
    assert float((codes_k.double() - w.double() / scale.double()).sum(dim=(2, 3)).abs().max()) <= 0.5 + 1e-6


def test_grid_edges_are_not_crossed():
    x = torch.tensor([[7.4, 7.45, 7.3, 7.2]], dtype=torch.float64)  # all round down, sum -1.65, codes at qmax
    codes, flips = squant_round(x, -8, 7)
    assert codes.max() <= 7 and flips["channel"] == 0


def test_squant_method_with_bias_correction_and_activations():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(32, 1, 8, 8)
    result = quantize(model, x, learnq.PTQ(method="squant", wbits=4, abits=8, bias_correction=True),
                      progress=False)
    assert [i["name"] for i in result.extra["squant"]] == ["0.weight", "3.weight"]
    w = result.model[0].weight.detach()
    ref = model[0].weight.detach()
    # mean bias correction: each output channel's mean equals the float one (float32 sums of 9 values)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), ref.mean(dim=(1, 2, 3)), rtol=0.0, atol=1e-6)
    assert [row.get("abits") for row in result.layers] == [8, 8]
