"""The integer deployment target (learnq.ptq.quantize(..., target="onnxruntime")): the kernels against hand
computations, the plan, onnxruntime's optimised graph (every conv, gemm, add and pooling an integer kernel), learnq's
integer codes against onnxruntime's at every quantized tensor, the model file, the config and the CLI."""

from __future__ import annotations

import json
import platform

import onnx
import pytest
import torch

import learnq
from learnq.act.integer import (
    EdgeQuantizer,
    QValue,
    accumulate,
    qlinear_add,
    qlinear_global_average_pool,
    quantize_linear,
    requantize,
)
from learnq.act.integer_graph import make_plan, simulate, trace
from learnq.attach import Selection
from learnq.cli import main
from learnq.errors import ConfigError, ModelError
from learnq.export import to_onnx
from learnq.export.runtime_report import optimized_graph
from learnq.pipeline.models import build_model
from learnq.ptq import PTQ, quantize
from tests.integer_probe import runtime_codes

MODELS = {"resnet20": ((3, 12, 12), {"width_mult": 0.5}), "mobilenetv2-small": ((3, 16, 16), {"width_mult": 0.5}),
          "lenet": ((1, 8, 8), {})}
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    shape, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **kwargs)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(16, *shape))
    return model.eval(), shape


@pytest.fixture(scope="module")
def quantized():
    out = {}
    for name in MODELS:
        model, shape = _model(name)
        torch.manual_seed(1)
        calib = torch.randn(48, *shape)
        result = quantize(model, calib, method="minmax", target="onnxruntime", progress=False)
        out[name] = (model, result, shape)
    return out


# -- kernels against hand computations -----------------------------------------------------------------------------
def test_requantize_rounds_half_to_even_and_saturates() -> None:
    acc = torch.tensor([5, 7, -3, 1000, -1000])
    codes = requantize(acc, torch.tensor(0.5), 10)  # 2.5 -> 2, 3.5 -> 4, -1.5 -> -2; +10; saturated to [0, 255]
    assert codes.tolist() == [12, 14, 8, 255, 0]


def test_quantize_linear_divides_and_rounds_half_to_even() -> None:
    v = quantize_linear(torch.tensor([0.25, 0.75, -0.25, 200.0]), torch.tensor(0.5), 3)
    assert v.codes.tolist() == [3, 5, 3, 255] and torch.equal(v.dequantize(), torch.tensor([0.0, 1.0, 0.0, 126.0]))


def test_accumulate_is_the_exact_integer_sum_with_the_bias() -> None:
    g = torch.Generator().manual_seed(0)
    x = QValue(torch.randint(0, 256, (3, 40), generator=g), torch.tensor(0.1), 7)
    w = torch.randint(-128, 128, (5, 40), generator=g)
    b = torch.randint(-1000, 1000, (5,), generator=g)
    expected = (x.codes - 7) @ w.T + b  # int64 matmul: the reference
    assert torch.equal(accumulate(x, w, b, "linear"), expected)
    xc = QValue(torch.randint(0, 256, (2, 3, 5, 5), generator=g), torch.tensor(0.1), 9)
    wc = torch.randint(-128, 128, (4, 3, 3, 3), generator=g)
    acc = accumulate(xc, wc, None, "conv2d", stride=1, padding=1, dilation=1, groups=1)
    padded = torch.nn.functional.pad(xc.codes - 9, (1, 1, 1, 1))  # zero padding of (q - z): the zero point's code
    assert int(acc[1, 2, 0, 0]) == int((padded[1, :, 0:3, 0:3] * wc[2]).sum())


def test_global_average_pool_requantizes_the_integer_sum() -> None:
    x = QValue(torch.tensor([[[[10, 20], [30, 41]]]]), torch.tensor(0.5), 4)
    codes = qlinear_global_average_pool(x, torch.tensor(0.25), 2)
    # sum - z·n = 101 - 16 = 85; M = 0.5 / (0.25 · 4) = 0.5; 42.5 -> 42 (half to even); + 2
    assert codes.reshape(-1).tolist() == [44]


def test_qlinear_add_hand_case() -> None:
    a = QValue(torch.tensor([10, 200]), torch.tensor(0.5), 5)
    b = QValue(torch.tensor([7, 0]), torch.tensor(0.25), 3)
    codes = qlinear_add(a, b, torch.tensor(1.0), 1)
    # (10-5)·0.5 + (7-3)·0.25 + 1 = 4.5 -> 4; (200-5)·0.5 + (0-3)·0.25 + 1 = 97.75 -> 98
    assert codes.tolist() == [4, 98]


def test_edge_quantizer_grid_includes_zero() -> None:
    q = EdgeQuantizer()
    q.observe(torch.tensor([0.5, 2.0]))
    q.observe(torch.tensor([3.0]))
    q.finish()
    g = q.grid()
    assert float(g.scale) == pytest.approx(3.0 / 255) and int(g.zero_point) == 0  # lo = min(0, 0.5) = 0
    q2 = EdgeQuantizer()
    q2.observe(torch.tensor([-1.0, 3.0]))
    g2 = q2.grid()
    assert int(g2.zero_point) == round(1.0 / (4.0 / 255))  # 64


# -- the plan ----------------------------------------------------------------------------------------------------
def test_plan_of_resnet20_fuses_relus_and_quantizes_adds(quantized) -> None:
    _, result, shape = quantized["resnet20"]
    plan = make_plan(trace(result.model, torch.zeros(1, *shape)))
    steps = plan.steps
    assert steps["x"].edge == "x"
    assert steps["net_stem_conv"].edge == "net_stem_relu"  # conv -> (folded BN) -> ReLU: fused
    assert steps["net_layer1_0_conv2"].edge == "net_layer1_0_conv2"  # feeds the residual add
    assert steps["add"].kind == "add" and steps["add"].edge == "net_layer1_0_relu2"
    assert steps["net_pool"].kind == "gap" and steps["net_fc"].edge is None  # logits stay float
    # input, stem ReLU, 9 conv1 ReLUs, 9 conv2s, 9 adds (their ReLUs), 2 shortcut convs, the pool
    assert len(plan.edges) == 1 + 1 + 9 + 9 + 9 + 2 + 1


# -- onnxruntime: every op an integer kernel, the same codes -------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_runs_every_layer_in_integer_kernels(quantized, name, tmp_path) -> None:
    model, result, shape = quantized[name]
    path = tmp_path / f"{name}.onnx"
    report = to_onnx(result.model, torch.randn(8, *shape), path)
    counts = report.runtime_node_counts
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    adds = {"resnet20": 9, "mobilenetv2-small": 3, "lenet": 0}[name]
    float_ops = {"Conv", "FusedConv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool", "Relu", "Clip"}
    assert not float_ops & set(counts), counts
    assert counts.get("QLinearConv") == convs and counts.get("QGemm") == linears
    assert counts.get("QLinearAdd", 0) == adds
    assert counts.get("QLinearGlobalAveragePool", 0) == (0 if name == "lenet" else 1)
    assert counts.get("QuantizeLinear") == 1 and counts.get("DequantizeLinear", 0) == 0  # input only; QGemm -> float
    assert all(row["integer"] for row in report.layers), report.layers
    assert report.check["max_abs_diff"] == 0.0 or not X86


@pytest.mark.parametrize("name", list(MODELS))
def test_integer_codes_equal_onnxruntimes_at_every_quantized_tensor(quantized, name, tmp_path) -> None:
    _, result, shape = quantized[name]
    torch.manual_seed(2)
    x = torch.randn(64, *shape)
    path = tmp_path / "m.onnx"
    to_onnx(result.model, x[:4], path, verify=False)
    runtime_logits, runtime = runtime_codes(path, x)
    codes: dict[str, QValue] = {}
    with torch.no_grad():
        logits = simulate(result.model, x, codes)
    # x86 (AVX2/AVX-512): exact; other CPUs' QLinearAdd kernels round differently: within one code
    tolerance = 0 if X86 else 1
    assert len(runtime) > 1
    for node, value in runtime.items():
        assert int((value - codes[node].codes).abs().max()) <= tolerance, node
    if X86:
        assert torch.equal(runtime_logits, logits)
    else:  # float32 logits of slightly different codes
        torch.testing.assert_close(runtime_logits, logits, rtol=0.05, atol=0.05)


def test_before_the_target_learnq_placed_qdq_at_inputs_only(tmp_path) -> None:
    """The issue's baseline: the default export leaves convs that feed an add or pooling in float."""
    model, shape = _model("resnet20")
    result = quantize(model, torch.randn(32, *shape), method="minmax", progress=False)
    report = to_onnx(result.model, torch.randn(4, *shape), tmp_path / "m.onnx")
    counts = report.runtime_node_counts
    assert "QLinearAdd" not in counts and counts.get("FusedConv", 0) + counts.get("Conv", 0) > 0
    assert any(not row["integer"] and "layer inputs only" in row["reason"] for row in report.layers)


# -- model file, config, CLI ---------------------------------------------------------------------------------------
def test_model_file_round_trip_is_bit_exact(quantized, tmp_path) -> None:
    model, result, shape = quantized["resnet20"]
    learnq.save(result.model, tmp_path / "m.safetensors")
    fresh, _ = _model("resnet20")
    learnq.load(tmp_path / "m.safetensors", fresh)
    x = torch.randn(20, *shape)
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))
    assert fresh.learnq_ptq_config["target"] == "onnxruntime"


def test_config_validates_the_target() -> None:
    assert "target" not in PTQ().to_dict() and PTQ.from_dict(PTQ(target="onnxruntime").to_dict()).target == \
        "onnxruntime"
    for bad, words in ((dict(abits=4), "abits=4"), (dict(scheme="affine"), "scheme"),
                       (dict(granularity="group:8"), "granularity"), (dict(bias_correction=True), "bias_correction"),
                       (dict(method="lapq"), "skip_first_last"), (dict(target="tensorrt"), "tensorrt")):
        with pytest.raises(ConfigError, match=words):
            PTQ(**{"target": "onnxruntime", **bad})


def test_a_layer_left_in_float_is_refused() -> None:
    model, shape = _model("lenet")
    with pytest.raises(ModelError, match="no quantized weight"):
        quantize(model, torch.randn(16, *shape), PTQ(target="onnxruntime", selection=Selection(
            exclude=("classifier.fc3.weight",))), progress=False)


def test_cli_quantize_target_then_export_reports_integer_layers(tmp_path, capsys) -> None:
    from learnq.pipeline.recipe import parse_recipe
    from learnq.pipeline.run import run_recipe
    from tests.recipe_util import tiny_recipe

    run_recipe(parse_recipe(tiny_recipe(epochs=1)), tmp_path, report=False)
    out = tmp_path / "int.safetensors"
    assert main(["quantize", str(tmp_path / "model.safetensors"), "--target", "onnxruntime", "--calib", "64",
                 "--out", str(out), "--json"]) == 0
    quant = json.loads(capsys.readouterr().out)
    assert quant["target"] == "onnxruntime"
    assert main(["export", str(out), "--onnx", str(tmp_path / "m.onnx"), "--eval", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] and all(row["integer"] for row in report["layers"])
    assert report["eval"]["learnq"]["accuracy"] == report["eval"]["onnxruntime"]["accuracy"]
    assert {"QGemm"} <= set(optimized_graph(tmp_path / "m.onnx").node[i].op_type
                            for i in range(len(optimized_graph(tmp_path / "m.onnx").node)))
    assert main(["bench", str(tmp_path / "m.onnx"), "--threads", "1", "--batch", "1", "--rounds", "1",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 1 and rows[0]["latency_s"] > 0 and rows[0]["throughput"] > 0


# -- 4-bit weights as MatMulNBits ----------------------------------------------------------------------------------
def test_w4_group_weights_export_as_matmulnbits(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10)).eval()
    calib = torch.randn(32, 64)
    result = quantize(model, calib, method="minmax", wbits=4, abits=32, granularity="group:16", progress=False)
    x = torch.randn(8, 64)
    report = to_onnx(result.model, x, tmp_path / "m.onnx", matmul_nbits=True)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2 and "Gemm" not in ops
    assert [t.export for t in report.tensors] == ["matmulnbits", "matmulnbits"] and report.not_qdq == []
    # onnxruntime dequantizes the blocks and multiplies in float32 (its own summation order): float tolerance
    with torch.no_grad():
        expected = result.model(x)
    torch.testing.assert_close(learnq.export.run_onnx(tmp_path / "m.onnx", x), expected, rtol=1e-4, atol=1e-5)
    eight = quantize(model, calib, method="minmax", wbits=8, abits=32, granularity="group:16", progress=False)
    to_onnx(eight.model, x, tmp_path / "e.onnx", matmul_nbits=True)  # 8-bit codes do not fit: Q/DQ + Gemm
    assert "MatMulNBits" not in [n.op_type for n in onnx.load(str(tmp_path / "e.onnx")).graph.node]
