"""Tests for learnq.ptq.quantize (learnq.ptq.api): bit configurations, copies, BN folding, errors, skipped layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

import learnq
from learnq.act import input_quantizers
from learnq.attach import Selection
from learnq.errors import ConfigError, DataError, ModelError, QuantizationError
from learnq.pipeline.data import load_dataset
from learnq.pipeline.train import evaluate
from learnq.ptq import PTQ_METHODS, quantize, register_ptq_method
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers
from learnq.quantized import quantized_parameters


@pytest.fixture(scope="module")
def trained():
    """A small conv net with BatchNorm trained on seeded synthetic 1x8x8 data (full batch, a few seconds)."""
    splits = load_dataset("synthetic", seed=0, input_shape=(1, 8, 8), size=600)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = splits.train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, splits


def _logit_error(result_model: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((result_model(x) - model(x)).pow(2).mean())


def test_w8a8_close_to_float_and_w4a4_worse(trained) -> None:
    model, splits = trained
    float_acc = evaluate(model, splits.test)["accuracy"]
    assert float_acc > 0.8
    x = splits.test.tensors[0]
    r8 = quantize(model, splits.calib, method="mse", wbits=8, abits=8)
    r4 = quantize(model, splits.calib, method="mse", wbits=4, abits=4)
    assert (r8.wbits, r8.abits, r8.method, r8.loss_evals) == (8, 8, "mse", 0)
    assert abs(evaluate(r8.model, splits.test)["accuracy"] - float_acc) <= 0.02
    e8, e4 = _logit_error(r8.model, model, x), _logit_error(r4.model, model, x)
    assert 0 < e8 < e4 / 10
    names = [row["name"] for row in r8.layers]
    assert names == ["0", "5", "7"]
    assert r8.layers[1]["signed"] is False and r8.layers[0]["signed"] is True  # post-ReLU input is unsigned
    assert r8.calib_seconds > 0 and r8.skipped == []


def test_caller_model_untouched_and_bn_folded(trained) -> None:
    model, splits = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize(model, splits.calib, method="minmax", wbits=4, abits=8)
    assert result.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not parametrize.is_parametrized(model[0]) and not input_quantizers(model)
    assert isinstance(result.model[1], nn.Identity)  # BatchNorm folded into the conv before quantization
    assert isinstance(result.model[0].parametrizations["weight"][-1], PTQWeight)
    kept = quantize(model, splits.calib, method="minmax", wbits=4, abits=8, fold_bn=False)
    assert isinstance(kept.model[1], nn.BatchNorm2d)
    assert any("BatchNorm" in s for s in kept.skipped)


def test_w4a32_leaves_activations_and_w32a8_weights(trained) -> None:
    model, splits = trained
    x = splits.test.tensors[0][:50]
    weights_only = quantize(model, splits.calib, method="mse", wbits=4, abits=32)
    assert weights_only.abits == 32 and not input_quantizers(weights_only.model)
    from learnq.bn_fold import fold_batchnorm

    manual = fold_batchnorm(model)
    attach_weight_quantizers(manual, 4, clip="mse")
    with torch.no_grad():
        assert torch.equal(weights_only.model(x), manual(x))
    acts_only = quantize(model, splits.calib, method="kl", wbits=32, abits=8, bins=256)
    assert acts_only.wbits == 32 and set(input_quantizers(acts_only.model)) == {"0", "5", "7"}
    assert not any(parametrize.is_parametrized(m) for m in acts_only.model.modules())


@pytest.mark.parametrize("method,options", [("minmax", {}), ("lp", {"p": 3.0}), ("aciq", {"distribution": "gaussian"}),
                                            ("kl", {"bins": 128})])
def test_every_clipping_method_runs_and_saves(trained, tmp_path, method: str, options: dict) -> None:
    model, splits = trained
    result = quantize(model, splits.calib, method=method, wbits=4, abits=4, granularity="channel",
                      bias_correction=True, **options)
    x = splits.test.tensors[0][:40]
    with torch.no_grad():
        expected = result.model(x)
    path = tmp_path / f"{method}.safetensors"
    learnq.save(result.model, path)
    fresh = copy.deepcopy(model)  # unfolded: load folds its BatchNorm as the file records, then loads
    learnq.load(path, fresh)
    assert isinstance(fresh[1], nn.Identity) and learnq.load(path).metadata["folded_batchnorm"] == [["0", "1"]]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_bias_correction_option_equalises_channel_means(trained) -> None:
    model, splits = trained
    result = quantize(model, splits.calib, method="minmax", wbits=3, abits=32, bias_correction=True)
    layer = result.model[5]
    w = layer.parametrizations["weight"].original
    assert torch.allclose(layer.weight.mean(dim=1), w.mean(dim=1), atol=1e-6)


def test_skip_first_last_and_selection(trained) -> None:
    model, splits = trained
    result = quantize(model, splits.calib, method="minmax", wbits=4, abits=4, skip_first_last=True)
    assert [row["name"] for row in result.layers] == ["5"]
    assert not parametrize.is_parametrized(result.model[0]) and not parametrize.is_parametrized(result.model[7])
    sel = quantize(model, splits.calib, wbits=4, abits=4, selection=Selection(exclude=("5.*",)))
    assert [row["name"] for row in sel.layers] == ["0", "7"]


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        h, _ = self.attn(h, h, h)
        return self.head(h[:, -1])


def test_unquantizable_layers_are_reported_and_left_in_float() -> None:
    torch.manual_seed(3)
    model = _Recurrent().eval()  # quantize returns an eval-mode copy; an MHA in eval mode runs PyTorch's fused
    # fast path, in training mode the unfused one (other kernels): compare both in eval mode, bit for bit
    x = torch.randn(20, 5, 4)
    result = quantize(model, x, method="minmax", wbits=4, abits=8)
    assert any(s.startswith("lstm (LSTM)") for s in result.skipped)
    assert not any(s.startswith("attn") for s in result.skipped)  # issue 16: attention is quantized
    q = result.model
    assert parametrize.is_parametrized(q.head) and set(input_quantizers(q)) == {"attn", "head"}
    # MHA reads out_proj's weight itself: the weight is quantized, its input (inside the attention) stays float
    assert parametrize.is_parametrized(q.attn, "in_proj_weight") and parametrize.is_parametrized(q.attn.out_proj)
    assert torch.equal(q.lstm.weight_hh_l0, model.lstm.weight_hh_l0)
    with torch.no_grad():
        assert torch.equal(q.lstm(x)[0], model.lstm(x)[0])  # float up to the attention


def test_activations_on_a_weight_quantized_model_report_no_skipped_layers() -> None:
    """Quantizing only the activations of a model whose weights are already quantized (weights first, then
    ``wbits=32``): the weights' parametrizations are not layers left in float (they were reported as such)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    weights = quantize(model, x, method="minmax", wbits=4, abits=32, skip_first_last=False).model
    both = quantize(weights, x, method="minmax", wbits=32, abits=8, skip_first_last=False)
    assert both.skipped == []
    assert set(input_quantizers(both.model)) == {"0", "2"}
    assert parametrize.is_parametrized(both.model[0], "weight")


def test_errors(trained) -> None:
    model, splits = trained
    with pytest.raises(DataError, match="empty"):
        quantize(model, torch.zeros(0, 1, 8, 8))
    with pytest.raises(DataError, match="empty"):
        quantize(model, TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)))
    with pytest.raises(ModelError, match="no conv or linear"):
        quantize(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), torch.randn(4, 4))
    with pytest.raises(ModelError, match="no conv or linear"):
        quantize(nn.Sequential(nn.Linear(4, 4)), torch.randn(4, 4), skip_first_last=True)
    with pytest.raises(ConfigError, match="unknown PTQ method"):
        quantize(model, splits.calib, method="percentile")
    with pytest.raises(ConfigError, match="no option 'p'"):
        quantize(model, splits.calib, method="mse", p=3.0)
    with pytest.raises(ConfigError, match="must be a float"):
        quantize(model, splits.calib, method="lp", p="3")
    with pytest.raises(ConfigError, match="nothing to quantize"):
        quantize(model, splits.calib, wbits=32, abits=32)
    with pytest.raises(QuantizationError, match="wbits"):
        quantize(model, splits.calib, wbits=0)


def test_registered_method_gets_the_context(trained) -> None:
    model, splits = trained
    seen = {}

    def fake(ctx):
        seen.update(n=ctx.inputs.shape[0], targets=ctx.targets is not None, wbits=ctx.wspec.bits, abits=ctx.abits,
                    options=dict(ctx.options))
        ctx.attach_weights(clip="minmax")
        ctx.loss_evals += 7
        return {"note": "ok"}

    register_ptq_method("fake-test", "a test method", fake, options={"steps": 3}, skip_first_last=True)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_ptq_method("fake-test", "again", fake)
        result = quantize(model, splits.calib, method="fake-test", wbits=4, abits=4, steps=5)
        assert seen == {"n": len(splits.calib), "targets": True, "wbits": 4, "abits": 4, "options": {"steps": 5}}
        assert result.loss_evals == 7 and result.extra == {"note": "ok"}
        assert [row["name"] for row in result.layers] == ["5"]  # its default: first and last left in float
    finally:
        PTQ_METHODS.pop("fake-test", None)


class _Embedded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, i: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(i))


def test_embeddings_reported_or_quantized_when_selected() -> None:
    torch.manual_seed(4)
    model = _Embedded()
    ids = torch.randint(0, 10, (40,))
    default = quantize(model, ids, wbits=4, abits=8)
    assert [s.split(" ")[0] for s in default.skipped] == ["emb"]
    assert not parametrize.is_parametrized(default.model.emb)
    chosen = quantize(model, ids, wbits=4, abits=8, selection=Selection(types=("linear", "embedding")))
    assert chosen.skipped == [] and parametrize.is_parametrized(chosen.model.emb)
    assert set(input_quantizers(chosen.model)) == {"fc"}  # integer ids are never fake-quantized


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_nan_or_inf_weight_raises_model_error_naming_the_parameter(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match=r"parameter '2\.weight' has 1 NaN or Inf value\(s\) of 24"):
        quantize(model, torch.randn(16, 4), method=method, wbits=4, abits=8, progress=False)
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()
    bn[1].running_var[1] = float("nan")  # shows up in the folded weight
    with pytest.raises(ModelError, match=r"parameter '0\.weight' has 9 NaN"):
        quantize(bn, torch.randn(4, 1, 5, 5), method=method, wbits=4, abits=8, progress=False)


def test_weights_are_quantized_per_channel_by_default(trained):
    model, splits = trained
    default = quantize(model, splits.calib, wbits=4, abits=8, progress=False)
    tensor = quantize(model, splits.calib, wbits=4, abits=8, granularity="tensor", progress=False)
    grids = {name: str(qt.granularity) for name, qt in quantized_parameters(default.model)}
    assert grids == {"0.weight": "axis:0", "5.weight": "axis:0", "7.weight": "axis:0"}
    assert {str(qt.granularity) for _, qt in quantized_parameters(tensor.model)} == {"tensor"}
    assert [qt.scale.numel() for _, qt in quantized_parameters(default.model)] == [8, 32, 10]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_inputs_are_a_data_error_naming_the_batch(bad) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 4)
    x[37, 2] = bad
    with pytest.raises(DataError, match=r"calibration data: input batch 1 \(samples 32\.\.63\) has 1 NaN or Inf "
                                        r"value\(s\), the first in sample 37"):
        quantize(model, x, method="mse", wbits=4, abits=8, batch_size=32, progress=False)
    with pytest.raises(DataError, match="input batch 0"):  # a Dataset of (input, target) pairs alike
        quantize(model, TensorDataset(x, torch.zeros(64, dtype=torch.long)), wbits=4, abits=32, progress=False)
