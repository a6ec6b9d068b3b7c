"""Tests for learnq.analysis.kl: histogram KL by hand, zero for identical models, growth as bits drop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learnq.analysis.kl import collect_outputs, histogram_kl, layer_kl, plot_kl, quantized_copy
from learnq.analysis.plots import PNG_SIGNATURE
from learnq.errors import ConfigError, DataError, ModelError


@pytest.fixture(scope="module")
def net_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, x


def test_histogram_kl_by_hand() -> None:
    p, q = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    # two bins on [0, 1]: counts p (2, 2), q (1, 3)
    exact = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # float64 from exact counts: ulps apart
    assert histogram_kl(p, q, bins=2, smoothing=0) == pytest.approx(exact, rel=1e-12)
    # pseudo-count 1: p (3/6, 3/6), q (2/6, 4/6)
    smoothed = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert histogram_kl(p, q, bins=2, smoothing=1) == pytest.approx(smoothed, rel=1e-12)
    assert histogram_kl(p, p, bins=7) == 0.0
    assert histogram_kl(torch.full((5,), 2.0), torch.full((3,), 2.0)) == 0.0
    assert histogram_kl(p, torch.tensor([1.0, 1.0]), bins=2, smoothing=0) == math.inf
    assert histogram_kl(p, q, bins=2, smoothing=0.5) > 0


def test_histogram_kl_errors() -> None:
    with pytest.raises(ConfigError, match="smoothing"):
        histogram_kl(torch.ones(2), torch.ones(2), smoothing=-1)
    with pytest.raises(ConfigError, match="bins"):
        histogram_kl(torch.ones(2), torch.ones(2), bins=0)
    with pytest.raises(DataError, match="non-empty"):
        histogram_kl(torch.ones(0), torch.ones(2))
    with pytest.raises(DataError, match="NaN"):
        histogram_kl(torch.tensor([float("inf")]), torch.ones(2))


def test_identical_models_give_zero(net_and_inputs) -> None:
    net, x = net_and_inputs
    kl = layer_kl(net, copy.deepcopy(net), x)
    assert kl == {"1": 0.0, "3": 0.0}
    assert layer_kl(net, copy.deepcopy(net), x, max_values=100) == {"1": 0.0, "3": 0.0}


def test_kl_grows_as_bits_drop(net_and_inputs) -> None:
    net, x = net_and_inputs
    kl = {b: layer_kl(net, quantized_copy(net, b), x) for b in (2, 4, 8)}
    for layer in ("1", "3"):
        assert 0 < kl[8][layer] < kl[4][layer] < kl[2][layer]


def test_quantized_copy_leaves_the_model_alone(net_and_inputs) -> None:
    net, _ = net_and_inputs
    before = net[1].weight.detach().clone()
    q = quantized_copy(net, 3)
    assert torch.equal(net[1].weight, before)
    assert q[1].weight.unique().numel() <= 2**3
    assert not torch.equal(q[1].weight, before)


def test_data_forms_agree(net_and_inputs) -> None:
    net, x = net_and_inputs
    quant = quantized_copy(net, 4)
    y = torch.zeros(len(x), dtype=torch.long)
    forms = {"tensor": x, "dataset": TensorDataset(x, y), "loader": DataLoader(TensorDataset(x, y), batch_size=32)}
    # every form gives batches of 32, 32, 32 and 4 samples: the same kernels on the same shapes, so the outputs, their
    # histograms and the KL are identical (other batchings may round a value 1 ulp apart, across a bin edge)
    kl = {name: layer_kl(net, quant, data, max_samples=100, batch_size=32) for name, data in forms.items()}
    assert kl["tensor"] == kl["dataset"] == kl["loader"]
    assert all(v > 0 for v in kl["tensor"].values())
    # other batchings (one batch of 100; 48 + 48 + 4) see the same samples in the same order. Float32 error of each
    # side: layer 1 sums 65 terms with Σ|terms| < 5.3 (<= 65·2⁻²⁴·5.3 ≈ 2.1e-5); layer 3 sums 33 terms with
    # Σ|terms| < 1.4 (2.8e-6) plus layer 1's error through rows of ‖w‖₁ < 3.3 (6.8e-5); two sides differ by twice that
    one = collect_outputs(net, x, ["1", "3"], max_samples=100, max_values=None, batch_size=256)
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=48)):
        got = collect_outputs(net, data, ["1", "3"], max_samples=100, max_values=None, batch_size=32)
        torch.testing.assert_close(got["1"], one["1"], rtol=0, atol=5e-5)
        torch.testing.assert_close(got["3"], one["3"], rtol=0, atol=2e-4)


def test_collect_outputs_and_subsampling(net_and_inputs) -> None:
    net, x = net_and_inputs
    out = collect_outputs(net, x, ["1", "3"], max_samples=100, max_values=None, batch_size=64)
    assert out["1"].numel() == 100 * 32 and out["3"].numel() == 100 * 10
    assert torch.allclose(out["3"], net(x[:100]).detach().reshape(-1))
    sub = collect_outputs(net, x, ["1"], max_samples=100, max_values=500, batch_size=64)
    assert sub["1"].numel() == math.ceil(500 * 64 / 100) + math.ceil(500 * 36 / 100)
    assert set(sub["1"].tolist()) <= set(out["1"].tolist())


def test_errors(net_and_inputs) -> None:
    net, x = net_and_inputs
    with pytest.raises(ModelError, match="no module named"):
        layer_kl(net, copy.deepcopy(net), x, layers=["fc9"])
    with pytest.raises(DataError, match="tensor of inputs, a Dataset or a DataLoader"):
        layer_kl(net, copy.deepcopy(net), [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layers is empty"):
        layer_kl(net, copy.deepcopy(net), x, layers=[])
    with pytest.raises(ConfigError, match="max_samples"):
        layer_kl(net, copy.deepcopy(net), x, max_samples=0)


def test_plot_kl(tmp_path, net_and_inputs) -> None:
    net, x = net_and_inputs
    kl = {f"{b} bits": layer_kl(net, quantized_copy(net, b), x, max_samples=64) for b in (2, 8)}
    assert plot_kl(kl["2 bits"], tmp_path / "one.png").read_bytes()[:8] == PNG_SIGNATURE
    assert plot_kl(kl, tmp_path / "two.png", log=True).read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ConfigError, match="no KL value"):
        plot_kl({}, tmp_path / "none.png")
