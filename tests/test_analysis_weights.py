"""Tests for learnq.analysis.weights (and the shared plot helpers of learnq.analysis.plots)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from learnq.analysis.plots import PNG_SIGNATURE, require_matplotlib
from learnq.analysis.weights import (
    named_weights,
    plot_histogram_comparison,
    plot_histograms,
    tensor_stats,
    weight_stats,
)
from learnq.attach import Selection
from learnq.errors import ConfigError, ModelError
from learnq.regularizers import SatNL


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_hand_computed_sample() -> None:
    # nine zeros and one 10: mean 1, deviations (-1 x9, 9), m2 = 9, m3 = 72, m4 = 657
    s = tensor_stats(torch.tensor([0.0] * 9 + [10.0]), "w")
    assert s["numel"] == 10 and s["shape"] == [10]
    assert s["mean"] == pytest.approx(1.0, abs=1e-12)
    assert s["std"] == pytest.approx(3.0, abs=1e-12)
    assert (s["min"], s["max"], s["range"], s["abs_max"]) == (0.0, 10.0, 10.0, 10.0)
    assert s["skewness"] == pytest.approx(72 / 27, abs=1e-12)
    assert s["kurtosis"] == pytest.approx(657 / 81, abs=1e-12)
    assert s["range_asymmetry"] == pytest.approx(1.0)
    assert s["max_abs_z"] == pytest.approx(3.0, abs=1e-12)
    # |10 - 1| = 9 = 3σ exactly: the outlier test is strict
    assert s["outliers"] == 0 and s["outlier_fraction"] == 0.0
    s2 = tensor_stats(torch.tensor([0.0] * 9 + [10.0]), outlier_sigma=2.5)
    assert s2["outliers"] == 1 and s2["outlier_fraction"] == pytest.approx(0.1)
    assert s2["outlier_sigma"] == 2.5


def test_symmetric_two_point_sample() -> None:
    s = tensor_stats(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    assert s["std"] == pytest.approx(1.0)
    assert s["kurtosis"] == pytest.approx(1.0)
    assert s["skewness"] == pytest.approx(0.0, abs=1e-12)
    assert s["range_asymmetry"] == pytest.approx(0.0, abs=1e-12)


def test_matches_scipy_on_random_sample_and_asymmetry_sign() -> None:
    g = torch.Generator().manual_seed(1)
    x = -torch.empty(5000, dtype=torch.float64).exponential_(generator=g)  # long negative tail
    s = tensor_stats(x)
    xn = x.numpy()
    # float64 moments of 5000 values, summed in other orders: relative error <= 5000·2⁻⁵³ ≈ 6e-13 each
    assert s["std"] == pytest.approx(float(np.std(xn)), rel=1e-10)
    assert s["skewness"] == pytest.approx(float(scipy.stats.skew(xn)), rel=1e-9)
    assert s["kurtosis"] == pytest.approx(float(scipy.stats.kurtosis(xn, fisher=False)), rel=1e-9)
    assert s["skewness"] < -1.5 and s["range_asymmetry"] < -0.5
    flipped = tensor_stats(-x)
    assert flipped["skewness"] == pytest.approx(-s["skewness"]) and flipped["range_asymmetry"] > 0.5
    z = np.abs(xn - xn.mean()) / xn.std()
    assert s["outliers"] == int((z > 3).sum()) > 0


def test_histogram_record() -> None:
    h = tensor_stats(torch.tensor([-1.0, -1.0, 0.5, 1.0, 3.0]), bins=2)["histogram"]
    assert (h["lo"], h["hi"]) == (-1.0, 3.0)
    assert h["counts"] == [3, 2]  # bins [-1, 1) and [1, 3]: the last bin is closed
    x = torch.randn(101, generator=torch.Generator().manual_seed(0))
    assert sum(tensor_stats(x, bins=7)["histogram"]["counts"]) == 101


def test_constant_tensor_is_defined_and_json_safe() -> None:
    s = tensor_stats(torch.full((3, 3), 0.5))
    assert s["std"] == 0.0 and s["range"] == 0.0
    assert s["skewness"] is None and s["kurtosis"] is None and s["max_abs_z"] is None
    assert s["range_asymmetry"] is None and s["outliers"] == 0
    json.dumps(s, allow_nan=False)


def test_weight_stats_of_model_in_order_without_biases() -> None:
    net = _net()
    stats = weight_stats(net)
    assert [s["name"] for s in stats] == ["0.weight", "3.weight"]
    assert stats[0]["shape"] == [4, 1, 3, 3] and stats[1]["numel"] == 1440
    assert stats[1]["max"] == pytest.approx(float(net[3].weight.detach().max()))
    # float64 std of 36 values two ways (learnq's moments, torch.std): each within ~36·2⁻⁵³ ≈ 4e-15 relative
    assert stats[0]["std"] == pytest.approx(float(net[0].weight.detach().double().std(correction=0)), rel=1e-12)
    with_bias = weight_stats(net, Selection(biases=True))
    assert [s["name"] for s in with_bias] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    json.dumps(stats, allow_nan=False)


def test_stats_see_the_weight_the_layer_computes_with() -> None:
    net = _net()
    raw = net[3].weight.detach().clone()
    SatNL.apply(net)
    a = raw.abs().max()
    s = {r["name"]: r for r in weight_stats(net)}["3.weight"]
    assert s["max"] == pytest.approx(float((a * torch.tanh(raw / a)).max()), rel=1e-6)
    assert s["abs_max"] < 0.77 * float(a)  # tanh(1) = 0.7616


def test_errors() -> None:
    with pytest.raises(ModelError, match="Conv1d/Conv2d/Conv3d/Linear"):
        weight_stats(nn.Sequential(nn.ReLU()))
    with pytest.raises(ModelError, match="NaN"):
        tensor_stats(torch.tensor([1.0, float("nan")]), "fc.weight")
    with pytest.raises(ConfigError, match="bins"):
        tensor_stats(torch.ones(3), bins=0)
    with pytest.raises(ConfigError, match="outlier_sigma"):
        tensor_stats(torch.ones(3), outlier_sigma=0)
    with pytest.raises(ConfigError, match="Selection"):
        named_weights(_net(), selection="linear")  # type: ignore[arg-type]


def test_plot_histograms_from_model_and_from_json(tmp_path) -> None:
    net = _net()
    path = plot_histograms(net, tmp_path / "sub" / "h.png", log=True, title="net")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    stats = json.loads(json.dumps(weight_stats(net)))
    path2 = plot_histograms(stats, tmp_path / "h2.png", layers=["3*"])
    assert path2.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError, match="no weight matches"):
        plot_histograms(stats, tmp_path / "h3.png", layers=["nope"])
    with pytest.raises(ConfigError, match="histogram"):
        plot_histograms([{"name": "x"}], tmp_path / "h4.png")


def test_histogram_comparison(tmp_path) -> None:
    a, b = _net(), _net()
    with torch.no_grad():
        b[3].weight.mul_(0.1)
    path = plot_histogram_comparison({"L2": a, "heavy L2": b, "tensor": torch.randn(100),
                                      "stats": weight_stats(a)}, "3", tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError, match="no conv/linear weight named"):
        plot_histogram_comparison({"L2": a}, "fc9", tmp_path / "d.png")


def test_missing_matplotlib_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"learnq\[plots\]"):
        require_matplotlib()
    assert math.isfinite(tensor_stats(torch.randn(10))["std"])  # statistics need no matplotlib
