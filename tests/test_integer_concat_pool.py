"""The integer target beyond ResNet/MobileNet: concatenation (QLinearConcat) and average pooling with a window
(QLinearAveragePool) against hand computations and onnxruntime, the clipping rules applied to the target's
activation ranges, and QAT-then-PTQ (a QAT model's weights kept, its PACT quantizers fused into the edges)."""

from __future__ import annotations

import copy
import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnq.act.integer import EdgeQuantizer, QValue, qlinear_average_pool, qlinear_concat, quantize_linear
from learnq.act.integer_graph import attach_integer_target, simulate
from learnq.act.integer_plan import make_plan, trace
from learnq.clipping import choose_clip
from learnq.export import to_onnx
from learnq.grid import GridSpec
from learnq.ptq import quantize
from tests.integer_probe import runtime_codes

X86 = platform.machine().lower() in ("x86_64", "amd64")
SHAPE = (3, 12, 12)


class Branchy(nn.Module):
    """Three branches concatenated (one with a ReLU fused, one without: a signed grid), average pooling with padding
    (count_include_pad both ways), an adaptive pool whose size divides the input's, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(20, 16, 3, padding=1)
        self.pool2 = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        y = self.pool2(F.relu(self.conv2(self.pool(y))))
        return self.fc(torch.flatten(self.adapt(y), 1))


def _branchy() -> nn.Module:
    torch.manual_seed(0)
    model = Branchy().train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(16, *SHAPE))
    return model.eval()


@pytest.fixture(scope="module", params=["minmax", "mse"])
def quantized(request):
    torch.manual_seed(1)
    calib = torch.randn(48, *SHAPE)
    return request.param, quantize(_branchy(), calib, method=request.param, target="onnxruntime", progress=False), calib


# -- kernels against hand computations -----------------------------------------------------------------------------
def test_qlinear_concat_copies_the_output_grid_and_requantizes_the_others() -> None:
    same = QValue(torch.tensor([[3, 250]]), torch.tensor(0.5), 3)
    other = QValue(torch.tensor([[10, 11]]), torch.tensor(0.25), 4)
    codes = qlinear_concat([same, other], 1, torch.tensor(0.5), 3)
    # same grid: copied; other: (10-4)·0.25 = 1.5 -> 1.5/0.5 = 3 + 3 = 6; (11-4)·0.25 = 1.75 -> 3.5 -> 4 (even) + 3
    assert codes.tolist() == [[3, 250, 6, 7]]
    assert torch.equal(codes[:, 2:], quantize_linear(other.dequantize(), torch.tensor(0.5), 3).codes)


def test_qlinear_average_pool_hand_case() -> None:
    x = QValue(torch.tensor([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]]), torch.tensor(0.5), 1)  # values (q - 1)·0.5
    # 2x2 windows, stride 2, padding 1: windows [0,0]=q 1 only; [0,1]= q 2,3; [1,0]= q 4,7; [1,1]= q 5,6,8,9
    with_pad = qlinear_average_pool(x, [2, 2], [2, 2], [1, 1], True, torch.tensor(0.25), 2)
    without = qlinear_average_pool(x, [2, 2], [2, 2], [1, 1], False, torch.tensor(0.25), 2)
    # sums of values: 0, 0.5+1 = 1.5, 1.5+3 = 4.5, 2+2.5+3.5+4 = 12; /4 (include pad) -> 0, 0.375, 1.125, 3
    # y/0.25 + 2: 2, 3.5 -> 4 (half to even), 6.5 -> 6, 14
    assert with_pad.tolist() == [[[[2, 4], [6, 14]]]]
    # / in-bounds count 1, 2, 2, 4 -> 0, 0.75, 2.25, 3 -> 2, 5, 11, 14
    assert without.tolist() == [[[[2, 5], [11, 14]]]]


def test_a_window_over_the_whole_input_is_the_global_kernel() -> None:
    x = QValue(torch.tensor([[[[10, 20], [30, 41]]]]), torch.tensor(0.5), 4)
    # as test_integer_target's global case: (101 - 16)·0.5/(0.25·4) = 42.5 -> 42 (integer sum, half to even) + 2
    assert qlinear_average_pool(x, [2, 2], [2, 2], [0, 0], True, torch.tensor(0.25), 2).reshape(-1).tolist() == [44]


# -- the plan and onnxruntime --------------------------------------------------------------------------------------
def test_plan_quantizes_concat_and_pools(quantized) -> None:
    _, result, _ = quantized
    steps = make_plan(trace(result.model, torch.zeros(1, *SHAPE))).steps
    assert steps["cat"].kind == "concat" and steps["cat"].edge == "cat"
    assert steps["net_c"].edge == "net_c"  # a branch without ReLU: its own (signed) grid, requantized by the concat
    assert [steps[n].kind for n in ("net_pool", "net_pool2", "net_adapt")] == ["avgpool"] * 3


def test_onnxruntime_runs_concat_and_pools_in_integer_kernels(quantized, tmp_path) -> None:
    _, result, _ = quantized
    report = to_onnx(result.model, torch.randn(8, *SHAPE), tmp_path / "m.onnx")
    counts = report.runtime_node_counts
    float_ops = {"Conv", "FusedConv", "Gemm", "Concat", "AveragePool", "GlobalAveragePool", "Relu", "Clip"}
    assert not float_ops & set(counts), counts
    assert counts["QLinearConcat"] == 1 and counts["QLinearAveragePool"] == 3 and counts["QLinearConv"] == 4
    assert counts["QuantizeLinear"] == 1 and "DequantizeLinear" not in counts
    assert all(row["integer"] for row in report.layers) and "Concat" in {row["op"] for row in report.layers}


def test_codes_equal_onnxruntimes_at_every_quantized_tensor(quantized, tmp_path) -> None:
    _, result, _ = quantized
    torch.manual_seed(2)
    x = torch.randn(64, *SHAPE)
    to_onnx(result.model, x[:4], tmp_path / "m.onnx", verify=False)
    runtime_logits, runtime = runtime_codes(tmp_path / "m.onnx", x)
    codes: dict[str, QValue] = {}
    with torch.no_grad():
        logits = simulate(result.model, x, codes)
    assert len(runtime) == 10
    # concat and pooling compute in float32 in the same order as learnq on every CPU; the one-code allowance off
    # x86 is for the requantization kernels (see test_integer_target.py)
    tolerance = 0 if X86 else 1
    for node, value in runtime.items():
        assert int((value - codes[node].codes).abs().max()) <= tolerance, node
    if X86:
        assert torch.equal(runtime_logits, logits)


# -- clipping the target's activation ranges -----------------------------------------------------------------------
def test_edge_clipping_narrows_the_range_by_the_rule() -> None:
    g = torch.Generator().manual_seed(0)
    relu = torch.randn(4000, generator=g).clamp(min=0) ** 2  # long right tail: MSE clips it
    q = EdgeQuantizer(sample_size=100_000)
    q.observe(relu[:2000])
    q.observe(relu[2000:])
    q.finish("mse")
    alpha = choose_clip(relu.reshape(1, -1), GridSpec(bits=8, scheme="unsigned", granularity="tensor"), "mse")
    assert float(q.lo) == 0.0 and float(q.hi) == pytest.approx(float(alpha), rel=0, abs=0)
    assert float(q.hi) < float(relu.max()) and int(q.grid().zero_point) == 0
    signed = torch.cat([-0.1 * relu[:100], relu])  # a signed tensor: α of the 256-level grid on [-α, α]
    s = EdgeQuantizer(sample_size=100_000)
    s.observe(signed)
    s.finish("mse")
    a = float(choose_clip(signed.reshape(1, -1), GridSpec(bits=8, scheme="lapq", granularity="tensor"), "mse"))
    assert float(s.lo) == pytest.approx(max(float(signed.min()), -a)) and float(s.hi) == pytest.approx(
        min(float(signed.max()), a))
    m = EdgeQuantizer()
    m.observe(relu)
    m.finish()
    assert float(m.hi) == float(relu.max())


def test_the_methods_activation_rule_reaches_the_target(quantized) -> None:
    method, result, calib = quantized
    assert result.extra["integer_target"]["act_clip"] == method
    same_weights = copy.deepcopy(result.model)
    attach_integer_target(same_weights, calib)  # min/max ranges of the same network
    minmax = same_weights.integer_edges
    for name, q in result.model.integer_edges.items():  # clipping only ever narrows the min/max range
        assert float(minmax[name].lo) <= float(q.lo) <= 0.0 <= float(q.hi) <= float(minmax[name].hi)
    if method == "mse":
        assert any(float(q.hi) < float(minmax[n].hi) for n, q in result.model.integer_edges.items())


# -- QAT-then-PTQ of the activations -------------------------------------------------------------------------------
def test_qat_model_keeps_its_weights_and_fuses_its_activation_quantizers(tmp_path) -> None:
    import learnq
    from learnq.act.integer import weight_codes
    from learnq.act.pact import PACT
    from learnq.act.wrappers import insert_activation_quantizers
    from learnq.pipeline.models import build_model
    from learnq.ptq import PTQ
    from learnq.quantized import quantized_parameters

    torch.manual_seed(0)
    model = build_model("lenet", (1, 8, 8), 10)
    handle = learnq.prepare(model, learnq.STE(bits=8, scheme="symmetric"))
    insert_activation_quantizers(model, 8, "pact", init_clip=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    for _ in range(3):  # a few QAT steps: weights and PACT clips move
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    exported = handle.freeze()
    result = quantize(model, x, PTQ(wbits=32, target="onnxruntime", fold_bn=False), progress=False)
    qts = dict(quantized_parameters(result.model))
    for name, qt in exported.items():  # the QAT weights, kept code for code
        layer = name.rsplit(".", 1)[0]
        codes, _ = weight_codes(qts, layer, result.model.get_submodule(layer))
        assert torch.equal(codes, qt.codes.to(torch.int64)), name
    steps = result.extra["integer_target"]["ops"]
    pacts = [n for n, kind in steps.items() if kind == "actq"]
    assert len(pacts) == 4 and set(pacts) <= set(result.model.integer_edges)  # every PACT fused: its edge
    clips = {"net_" + name.replace(".", "_"): float(m.clip.detach()) for name, m in result.model.named_modules()
             if isinstance(m, PACT)}
    assert set(clips) == set(pacts)
    for node in pacts:  # observed on PACT's output: within its clip (float32 of the clip itself)
        edge = result.model.integer_edges[node]
        assert float(edge.lo) == 0.0 and float(edge.hi) <= clips[node]
    report = to_onnx(result.model, x[:8], tmp_path / "m.onnx")
    counts = report.runtime_node_counts
    assert counts["QLinearConv"] == 2 and counts["QGemm"] == 3 and counts["QuantizeLinear"] == 1
    assert not {"Relu", "Clip", "Conv", "Gemm", "DequantizeLinear"} & set(counts), counts
    assert report.check["max_abs_diff"] == 0.0 or not X86
