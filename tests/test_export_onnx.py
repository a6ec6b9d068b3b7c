"""Tests for ONNX export (learnq.export, ``learnq export``): Q/DQ plans against hand computations, activation
quantizers bit for bit through onnxruntime, digits models (pipeline files, W8A8 per tensor and per channel, W4A4,
DiffQ, nested) whose onnxruntime accuracy is within 0.5 points of learnq's, LeNet and a BN-folded ResNet-20, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recipe_util import tiny_recipe
from torch import nn

import learnq
from learnq.act import PACT, ActQuantizer, ObserverFakeQuant, insert_activation_quantizers
from learnq.cli import main
from learnq.errors import ConfigError, ModelError
from learnq.export import evaluate_onnx, run_onnx, to_onnx
from learnq.export.qdq import plan_activation, plan_weight
from learnq.granularity import Granularity
from learnq.grid import GridSpec, QuantizedTensor, quantize_tensor
from learnq.pipeline.data import load_dataset
from learnq.pipeline.model_files import evaluate_file
from learnq.pipeline.models import build_model
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.run import run_recipe
from learnq.pipeline.train import evaluate
from learnq.ptq import quantize

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

RECIPE = tiny_recipe("export-tiny", version=1, seed=0, limit=None, calib_size=128, test_fraction=0.2, hidden=(32,),
                     epochs=3, batch_size=64, lr=0.01, optimizer="adam", plots=None, tables="""\
[[variants]]
method = "diffq"
options = { penalty = 5.0, quant_lr = 0.1, epochs = 1 }
[[variants]]
method = "nested"
granularity = "row"
options = { gamma_bins = 0.001, quant_lr = 0.003, epochs = 1 }
""")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _ops(path) -> list:
    return list(onnx.load(str(path)).graph.node)


def _count(path, op: str) -> int:
    return sum(n.op_type == op for n in _ops(path))


def _initializers(path) -> dict:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def _attr(node, name: str):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


# -- plans: hand computations ------------------------------------------------------------------------------------
def _qt(codes, scale, offset, granularity="tensor", bits=8, qmin=-128, scheme="symmetric", **kw) -> QuantizedTensor:
    return QuantizedTensor(codes=torch.tensor(codes, dtype=torch.int32), scale=torch.tensor(scale).float().reshape(-1),
                           offset=torch.tensor(offset).float().reshape(-1), granularity=Granularity.parse(granularity),
                           bits=bits, qmin=qmin, scheme=scheme, **kw)


def test_symmetric_per_channel_plan_is_bit_exact() -> None:
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    qt = quantize_tensor(w, GridSpec(bits=8, granularity="channel"))
    plan = plan_weight(qt, 13)
    assert plan.dtype == "int8" and plan.axis == 0 and plan.exact and plan.max_abs_error == 0.0
    assert np.array_equal(plan.codes, qt.codes.numpy()) and not plan.zero_point.any()
    deq = (plan.codes.astype(np.float32) - plan.zero_point[:, None]) * plan.scale[:, None]
    assert np.array_equal(deq, qt.dequantize().numpy())


def test_unsigned_codes_are_uint8_and_an_integer_zero_point_is_kept() -> None:
    assert plan_weight(_qt([[0, 255, 17]], [0.1], [0.0], qmin=0, scheme="unsigned"), 13).dtype == "uint8"
    plan = plan_weight(_qt([[0, 4, 9]], [0.5], [-1.5], qmin=0, scheme="affine"), 13)  # offset = -3 steps
    assert plan.dtype == "uint8" and plan.zero_point.item() == 3
    assert plan.max_abs_error <= 1e-6  # (q - 3)·0.5 vs q·0.5 - 1.5: both exact here
    # codes [-3, 200] with zero point 0 fit int8 after one shift: (q + k) - (0 + k) = q
    plan = plan_weight(_qt([[-3, 200, 0]], [0.25], [0.0], qmin=-3, scheme="symmetric"), 13)
    assert plan.dtype == "int8" and plan.exact
    assert np.array_equal(plan.codes.astype(np.int64) - int(plan.zero_point), np.array([[-3, 200, 0]]))


def test_grids_onnx_cannot_carry_say_why() -> None:
    w = torch.linspace(-0.9, 2.1, 24).reshape(4, 6)  # offset -0.9 = -76.5 steps of 3/255
    affine = plan_weight(quantize_tensor(w, GridSpec(bits=8, scheme="affine")), 13)
    assert isinstance(affine, str) and "not an integer multiple of the step" in affine and "affine" in affine
    lapq = plan_weight(quantize_tensor(w, GridSpec(bits=4, scheme="lapq")), 13)
    assert isinstance(lapq, str) and "LAPQ" in lapq
    diffq = _qt([[0, 3, 1, 2]], [0.1, 0.3], [-0.05, -0.05], granularity="group:2", qmin=0, scheme="affine",
                group_bits=torch.tensor([2, 3], dtype=torch.uint8))
    reason = plan_weight(diffq, 13)
    assert isinstance(reason, str) and "DiffQ" in reason and "2..3" in reason
    zero = plan_weight(_qt([[1, 2]], [0.0], [0.0]), 13)
    assert isinstance(zero, str) and "positive scales" in zero


def test_code_width_follows_the_opset() -> None:
    wide = _qt([[-1000, 5, 999]], [0.01], [0.0], bits=11, qmin=-1000)
    reason = plan_weight(wide, 13)
    assert isinstance(reason, str) and "[-1000, 999] (11 bits)" in reason and "--opset 21" in reason
    assert plan_weight(wide, 21).dtype == "int16"
    four = _qt([[-8, 7, 0]], [0.1], [0.0], bits=4, qmin=-8)
    assert plan_weight(four, 13).dtype == "int8" and plan_weight(four, 21).dtype == "int4"


def test_partial_groups_are_padded_rows() -> None:
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))  # 15 values, groups of 4: the last has 3
    qt = quantize_tensor(w, GridSpec(bits=8, granularity="group:4"))
    plan = plan_weight(qt, 13)
    assert plan.grouped and plan.codes.shape == (4, 4) and plan.axis == 0 and plan.shape == (3, 5)
    deq = ((plan.codes.astype(np.float32) - plan.zero_point[:, None]) * plan.scale[:, None]).reshape(-1)[:15]
    assert np.array_equal(deq.reshape(3, 5), qt.dequantize().numpy())


def test_activation_plans() -> None:
    q = ActQuantizer(8, signed=False)
    q.set_alpha(2.55)
    plan = plan_activation(q, "q")
    assert (plan.qtype, plan.qmin, plan.qmax) == ("uint8", 0, 255) and plan.scale == np.float32(2.55) / 255
    q4 = ActQuantizer(4, signed=True)
    q4.set_alpha(1.0)
    plan4 = plan_activation(q4, "q4")
    assert plan4.qtype is None and "4-bit activations" in plan4.reason and (plan4.qmin, plan4.qmax) == (-8, 7)
    obs = ObserverFakeQuant(8)
    obs(torch.tensor([-1.0, 3.0]))
    plan_o = plan_activation(obs.eval(), "obs")
    assert plan_o.qtype == "uint8" and plan_o.zero_point.item() == round(1.0 / (4.0 / 255))
    with pytest.raises(ModelError, match="not an activation quantizer"):
        plan_activation(nn.ReLU(), "relu")


# -- activation quantizers through onnxruntime, bit for bit --------------------------------------------------------
def _calibrated(bits: int, signed: bool, per_channel: bool = False, alpha=1.7) -> ActQuantizer:
    q = ActQuantizer(bits, signed=signed, per_channel=per_channel)
    q.set_alpha(torch.as_tensor(alpha))
    q.enabled = True
    return q


@pytest.mark.parametrize("module, export", [
    (_calibrated(8, False), "qdq"), (_calibrated(8, True), "qdq"), (_calibrated(4, False), "emulated"),
    (_calibrated(1, True), "emulated"), (_calibrated(8, False, True, [0.5, 1.0, 2.0]), "qdq"),
    (_calibrated(8, True, True, [0.5, 0.0, 2.0]), "emulated"), (PACT(8, 2.0), "qdq"), (PACT(3, 2.0), "emulated"),
])
def test_activation_quantizers_are_bit_exact_in_onnxruntime(module, export, tmp_path) -> None:
    step = torch.from_numpy(plan_activation(module, "m").scale).reshape(-1, 1, 1)
    # inputs at (k + 1/2) steps and one ulp either side: round(x·(1/Δ)) would put some of them on other codes
    ties = ((torch.arange(-150, 150).float() + 0.5).reshape(12, 1, 5, 5) * step).expand(12, 3, 5, 5).contiguous()
    up, down = torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)
    x = torch.cat([ties, up, down, torch.randn(28, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 2])
    report = to_onnx(module, x, tmp_path / "q.onnx")
    assert [t.export for t in report.tensors] == [export]
    with torch.no_grad():
        expected = module.eval()(x)
    for optimize in (True, False):
        assert torch.equal(run_onnx(tmp_path / "q.onnx", x, optimize=optimize), expected)


def test_observer_with_zero_point_is_bit_exact(tmp_path) -> None:
    obs = ObserverFakeQuant(8)
    obs(torch.tensor([-0.7, 2.9]))
    obs.eval()
    x = torch.linspace(-2, 4, 4001).reshape(1, -1)
    report = to_onnx(obs, x, tmp_path / "o.onnx")
    assert report.tensors[0].dtype == "uint8"
    zps = [t for name, t in _initializers(tmp_path / "o.onnx").items() if name.endswith("zero_point")]
    assert [onnx.numpy_helper.to_array(t).item() for t in zps] == [round(0.7 / (3.6 / 255))]  # = 50
    assert torch.equal(run_onnx(tmp_path / "o.onnx", x), obs(x))


def test_quantizers_inserted_after_relus(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=(16, 16))
    assert insert_activation_quantizers(model, bits=8, method="observer") == ["relu1", "relu2"]
    x = torch.randn(32, 1, 8, 8)
    model.train()(x)  # the observers' calibration batch
    report = to_onnx(model, x, tmp_path / "m.onnx")
    assert [(t.name, t.export, t.dtype) for t in report.tensors] == [("relu1.1", "qdq", "uint8"),
                                                                     ("relu2.1", "qdq", "uint8")]
    assert report.node_counts["QuantizeLinear"] == 2 and report.check["max_abs_diff_reference"] < 1e-4


# -- digits models from the pipeline -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A trained MLP (model.safetensors) with DiffQ and nested variants, plus W8A8 per tensor / per channel and
    W4A4 minmax files made by `learnq quantize`."""
    out = tmp_path_factory.mktemp("export")
    run_recipe(parse_recipe(RECIPE), out, report=False)
    for name, gran, bits in (("w8a8-tensor", "tensor", "8"), ("w8a8-channel", "channel", "8"),
                             ("w4a4", "channel", "4")):
        assert main(["quantize", str(out / "model.safetensors"), "--method", "minmax", "--wbits", bits, "--abits",
                     bits, "--granularity", gran, "--calib", "128", "--out", str(out / f"{name}.safetensors"),
                     "--json"]) == 0
    return out


def _export_json(capsys, src, dst, *extra: str) -> dict:
    code, text, err = _cli(capsys, "export", str(src), "--onnx", str(dst), "--json", *extra)
    assert code == 0, err
    return json.loads(text)


def _within_half_a_point(src, dst) -> tuple[float, float]:
    ours = evaluate_file(src)["accuracy"]
    theirs = evaluate_onnx(dst, load_dataset("digits", seed=0, calib_size=128, test_fraction=0.2).test)["accuracy"]
    assert abs(100 * (theirs - ours)) <= 0.5, (ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("name, axis", [("w8a8-tensor", None), ("w8a8-channel", 0)])
def test_w8a8_exports_qdq_and_matches_learnq(digits_run, name, axis, tmp_path, capsys) -> None:
    src, dst = digits_run / f"{name}.safetensors", tmp_path / f"{name}.onnx"
    report = _export_json(capsys, src, dst, "--eval")
    ours, theirs = _within_half_a_point(src, dst)
    assert report["eval"]["learnq"]["accuracy"] == ours and report["eval"]["onnxruntime"]["accuracy"] == theirs
    assert (_count(dst, "QuantizeLinear"), _count(dst, "DequantizeLinear")) == (2, 4)  # 2 inputs, 2 weights
    assert report["not_qdq"] == [] and all(t["export"] == "qdq" and t["exact"] for t in report["tensors"])
    inits = _initializers(dst)
    for layer, width in (("fc1", 32), ("fc2", 10)):
        assert inits[f"{layer}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert len(onnx.numpy_helper.to_array(inits[f"{layer}.weight_scale"]).reshape(-1)) == (1 if axis is None
                                                                                               else width)
    acts = {t["name"]: t["dtype"] for t in report["tensors"] if t["kind"] == "activation"}
    assert acts == {"fc1.input_quantizer": "int8", "fc2.input_quantizer": "uint8"}  # normalised input; after ReLU
    dq = [n for n in _ops(dst) if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert [_attr(n, "axis") for n in dq] == [axis, axis]
    assert report["check"]["max_abs_diff_reference"] < 1e-4 and report["unquantized"] == ["fc1.bias", "fc2.bias"]


def test_w4a4_reports_emulated_activations_and_matches(digits_run, tmp_path, capsys) -> None:
    src, dst = digits_run / "w4a4.safetensors", tmp_path / "w4a4.onnx"
    report = _export_json(capsys, src, dst)
    _within_half_a_point(src, dst)
    emulated = {t["name"]: t["reason"] for t in report["not_qdq"]}
    assert set(emulated) == {"fc1.input_quantizer", "fc2.input_quantizer"}
    assert all("4-bit activations" in why for why in emulated.values())
    assert _count(dst, "QuantizeLinear") == 0 and _count(dst, "Round") == 2 and _count(dst, "DequantizeLinear") == 2
    code, text, _ = _cli(capsys, "export", str(src), "--onnx", str(tmp_path / "w4a4-21.onnx"), "--opset", "21")
    assert code == 0 and "emulated: 4-bit activations" in text and "qdq int4" in text
    assert _initializers(tmp_path / "w4a4-21.onnx")["fc1.weight_quantized"].data_type == onnx.TensorProto.INT4


def test_diffq_exports_float_weights_and_says_so(digits_run, tmp_path, capsys) -> None:
    src, dst = digits_run / "diffq.safetensors", tmp_path / "diffq.onnx"
    report = _export_json(capsys, src, dst)
    _within_half_a_point(src, dst)
    weights = {t["name"]: t for t in report["not_qdq"]}
    assert set(weights) == {"fc1.weight", "fc2.weight"}
    assert all(t["export"] == "float" and "DiffQ" in t["reason"] for t in weights.values())
    assert _count(dst, "DequantizeLinear") == 0
    assert _initializers(dst)["fc1.weight"].data_type == onnx.TensorProto.FLOAT
    code, text, _ = _cli(capsys, "export", str(src), "--onnx", str(dst))
    assert code == 0 and "fc1.weight: " in text and "-> float: the offset is not an integer multiple" in text


def test_nested_codes_within_8_bits_are_qdq(digits_run, tmp_path, capsys) -> None:
    src, dst = digits_run / "nested.safetensors", tmp_path / "nested.onnx"
    report = _export_json(capsys, src, dst)
    _within_half_a_point(src, dst)
    assert {t["name"] for t in report["tensors"]} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(t["export"] == "qdq" and t["exact"] for t in report["tensors"])  # floor codes times s: exact


def test_wide_nested_codes_are_float_below_opset_21(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=(16,))
    handle = learnq.prepare(model, learnq.Nested(granularity="row", init_bits=12))  # live quantizers, 12-bit codes
    x = torch.randn(16, 1, 8, 8)
    report = to_onnx(model, x, tmp_path / "n13.onnx")
    wide = {t.name: t.reason for t in report.not_qdq}
    assert {"fc1.weight", "fc2.weight"} <= set(wide) and "--opset 21" in wide["fc1.weight"]
    assert report.check["max_abs_diff_reference"] < 1e-4
    report21 = to_onnx(model, x, tmp_path / "n21.onnx", opset=21)
    assert {t.name: t.dtype for t in report21.tensors}["fc1.weight"] == "int16" and not report21.not_qdq
    with torch.no_grad():
        expected = model.eval()(x)
    assert torch.allclose(run_onnx(tmp_path / "n21.onnx", x), expected, atol=1e-4)
    handle.remove()


# -- conv nets ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, calib_size=128, test_fraction=0.2)


def _trained(name: str, splits, steps: int, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, splits.input_shape, 10, **kwargs)
    x, y = splits.train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def test_lenet_with_conv_and_pooling(digits, tmp_path) -> None:
    model = _trained("lenet", digits, 120)
    x_test = digits.test.tensors[0]
    for gran, opset in (("channel", 13), ("group:16", 17), ("tensor", 21)):
        quantized = quantize(model, digits.calib, method="minmax", wbits=8, abits=8, granularity=gran,
                             progress=False).model
        path = tmp_path / f"lenet-{opset}.onnx"
        report = to_onnx(quantized, x_test[:32], path, opset=opset)
        assert not report.not_qdq and all(t.exact for t in report.tensors)
        counts = report.node_counts
        assert (counts["Conv"], counts["MaxPool"], counts["QuantizeLinear"], counts["DequantizeLinear"]) == (2, 2, 5,
                                                                                                            10)
        # group:16: each weight's codes are (groups, 16) rows, reshaped back; conv1 (150 values) and fc3 (840) end
        # with a partial group, cut off by a Slice
        assert counts.get("Reshape", 0) == (10 if gran == "group:16" else 0)
        assert counts.get("Slice", 0) == (2 if gran == "group:16" else 0)
        assert abs(100 * (evaluate_onnx(path, digits.test)["accuracy"]
                          - evaluate(quantized, digits.test)["accuracy"])) <= 0.5


def test_resnet20_with_folded_batchnorm_and_residual_adds(digits, tmp_path) -> None:
    model = _trained("resnet20", digits, 40, width_mult=0.25)
    float_report = to_onnx(model, digits.test.tensors[0][:16], tmp_path / "float.onnx")
    assert float_report.node_counts["BatchNormalization"] == 21 and float_report.tensors == []
    assert float_report.check["max_abs_diff"] < 1e-4
    quantized = quantize(model, digits.calib, method="minmax", wbits=8, abits=8, granularity="channel",
                         progress=False).model
    path = tmp_path / "resnet.onnx"
    report = to_onnx(quantized, digits.test.tensors[0][:16], path)
    counts = report.node_counts
    assert "BatchNormalization" not in counts and counts["Add"] == 9 and counts["Conv"] == 21
    assert counts["QuantizeLinear"] == 22 and counts["DequantizeLinear"] == 44 and not report.not_qdq
    assert abs(100 * (evaluate_onnx(path, digits.test)["accuracy"]
                      - evaluate(quantized, digits.test)["accuracy"])) <= 0.5


def test_bias_corrected_and_lapq_grids_are_float(digits, tmp_path) -> None:
    model = _trained("mlp", digits, 30)
    bc = quantize(model, digits.calib, wbits=4, abits=32, bias_correction=True, progress=False).model
    report = to_onnx(bc, digits.test.tensors[0][:8], tmp_path / "bc.onnx")
    assert [t.reason for t in report.not_qdq if "bias correction" in t.reason] and report.check["argmax_agreement"]
    lapq = quantize(model, digits.calib, wbits=4, abits=32, scheme="lapq", progress=False).model
    report = to_onnx(lapq, digits.test.tensors[0][:8], tmp_path / "lapq.onnx")
    assert {t.export for t in report.tensors} == {"float"} and "LAPQ" in report.tensors[0].reason
    assert report.check["max_abs_diff_reference"] < 1e-4


# -- errors ---------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(digits_run, tmp_path, capsys) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model file at all")
    code, _, err = _cli(capsys, "export", str(junk), "--onnx", str(tmp_path / "x.onnx"))
    assert code == 2 and "junk.safetensors" in err
    code, _, err = _cli(capsys, "export", str(digits_run / "w8a8-tensor.safetensors"), "--onnx",
                        str(tmp_path / "missing" / "x.onnx"))
    assert code == 2 and "does not exist" in err and "missing" in err
    code, _, err = _cli(capsys, "export", str(digits_run), "--onnx", str(tmp_path / "x.onnx"), "--opset", "11")
    assert code == 2 and "opset" in err
    user = tmp_path / "user.safetensors"
    learnq.save(nn.Linear(3, 2), user)
    code, _, err = _cli(capsys, "export", str(user), "--onnx", str(tmp_path / "x.onnx"))
    assert code == 2 and "no pipeline metadata" in err


def test_unsupported_operations_are_named(tmp_path) -> None:
    class Sorts(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(x, dim=1).values

    with pytest.raises(ModelError, match="sort"):
        to_onnx(Sorts(), torch.randn(2, 3), tmp_path / "s.onnx")
    with pytest.raises(ModelError, match="Upsample"):
        to_onnx(nn.Sequential(nn.Upsample(scale_factor=2)), torch.randn(1, 1, 2, 2), tmp_path / "u.onnx")
    with pytest.raises(ConfigError, match="float32"):
        to_onnx(nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.float64), tmp_path / "d.onnx")
    with pytest.raises(ConfigError, match="directory"):
        to_onnx(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path)
