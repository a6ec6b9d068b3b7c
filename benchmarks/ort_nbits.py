"""Benchmark for issue 13, 4-bit weights: onnxruntime's ``MatMulNBits`` (com.microsoft, weight-only int4 blocks)
written from learnq's own 4-bit codes, against float and int8, on linear layers.

Network: two linear layers ``1024 -> 4096 -> ReLU -> 1024`` (random weights; latency does not depend on them).
learnq quantizes the weights with ``learnq.ptq.quantize(method="minmax", wbits=4, abits=32,
granularity="group:32")``: symmetric 4-bit codes ``q in [-8, 7]`` with one step per 32 consecutive inputs of an output
row, which is exactly MatMulNBits' layout (blocks of ``block_size = 32`` along K for each of the N outputs, uint4
codes ``q + 8`` with the default zero point 8, low nibble first), so the codes are written as they are; the check
compares the MatMulNBits graph with the float graph of learnq's dequantized weights ŵ.

Rows: ``float`` (MatMul with the float weights), ``float-w4`` (MatMul with ŵ: the reference values), ``int8-dynamic``
(``quantize_dynamic``, per-channel int8 weights, activations quantized at run time), ``nbits-w4`` (MatMulNBits from
learnq's codes, float compute: ``accuracy_level`` 0) and ``nbits-w4-int8`` (the same with ``accuracy_level=4``:
activations quantized to int8 blocks at run time, integer dot products). Latency: :func:`learnq.export.bench.bench`,
1 and 2 threads, batch 1 and 64, interleaved rounds, speed-up vs ``float``.

    .venv/bin/python benchmarks/ort_nbits.py        # ~1 minute; writes benchmarks/results/ort_nbits.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from learnq.export.bench import bench
from learnq.ptq import quantize
from learnq.quantized import quantized_parameters

RESULTS = Path(__file__).resolve().parent / "results"
K, H = 1024, 4096
BLOCK = 32


def graph(weights: list[np.ndarray], biases: list[np.ndarray], nbits: list[dict] | None = None,
          accuracy_level: int = 0) -> onnx.ModelProto:
    nodes, inits = [], []
    x = "input"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        out = f"h{i}"
        if nbits is None:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        else:
            p = nbits[i]
            inits += [numpy_helper.from_array(p["packed"], f"w{i}"), numpy_helper.from_array(p["scales"], f"s{i}")]
            nodes.append(helper.make_node("MatMulNBits", [x, f"w{i}", f"s{i}"], [f"m{i}"], domain="com.microsoft",
                                          K=p["K"], N=p["N"], bits=4, block_size=BLOCK,
                                          accuracy_level=accuracy_level))
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out]))
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        x = out
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", K])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", K])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if nbits else [])
    return helper.make_model(g, opset_imports=opsets, ir_version=8)


def pack_nbits(codes: torch.Tensor, steps: torch.Tensor) -> dict:
    """learnq's (N, K) codes in [-8, 7] and (N·K/32,) steps -> MatMulNBits' packed uint4 blocks and scales."""
    n, k = codes.shape
    q = (codes.to(torch.int64) + 8).numpy().astype(np.uint8).reshape(n, k // BLOCK, BLOCK)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
    return {"packed": np.ascontiguousarray(packed), "scales": steps.numpy().astype(np.float32).reshape(-1), "K": k,
            "N": n}


def main() -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, H), nn.ReLU(), nn.Linear(H, K)).eval()
    calib = torch.randn(64, K)
    result = quantize(model, calib, method="minmax", wbits=4, abits=32, granularity=f"group:{BLOCK}", progress=False)
    qts = dict(quantized_parameters(result.model))
    layers = [result.model[0], result.model[2]]
    biases = [m.bias.detach().numpy().astype(np.float32) for m in layers]
    packs, w_hat = [], []
    for i in (0, 2):
        qt = qts[f"{i}.weight"]
        assert int(qt.codes.min()) >= -8 and int(qt.codes.max()) <= 7 and bool((qt.offset == 0).all())
        packs.append(pack_nbits(qt.codes, qt.scale.reshape(-1)))
        w_hat.append(qt.dequantize().detach().numpy().astype(np.float32))
    floats = [m.weight.detach().numpy().astype(np.float32) for m in (model[0], model[2])]
    tmp = Path(tempfile.mkdtemp(prefix="learnq-nbits-"))
    files = {"float": tmp / "float.onnx", "float-w4": tmp / "float_w4.onnx", "int8-dynamic": tmp / "int8.onnx",
             "nbits-w4": tmp / "nbits.onnx", "nbits-w4-int8": tmp / "nbits_int8.onnx"}
    onnx.save(graph(floats, biases), str(files["float"]))
    onnx.save(graph(w_hat, biases), str(files["float-w4"]))
    onnx.save(graph(w_hat, biases, packs), str(files["nbits-w4"]))
    onnx.save(graph(w_hat, biases, packs, accuracy_level=4), str(files["nbits-w4-int8"]))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(files["float"]), str(files["int8-dynamic"]), per_channel=True, weight_type=QuantType.QInt8)
    x = np.random.default_rng(0).standard_normal((64, K)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for name, p in files.items()}
    ref = run["float-w4"]
    check = {name: float(np.abs(out - ref).max() / np.abs(ref).max()) for name, out in run.items()}
    torch.set_num_threads(1)
    rows = bench({k: str(v) for k, v in files.items()}, threads=(1, 2), batches=(1, 64), rounds=9, min_seconds=0.2,
                 baseline="float")
    out = {"shape": [K, H, K], "block": BLOCK, "relative_max_diff_vs_float_w4": check,
           "file_bytes": {k: os.path.getsize(v) for k, v in files.items()}, "rows": rows,
           "when": time.strftime("%Y-%m-%d %H:%M:%S"), "onnxruntime": ort.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ort_nbits.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("relative_max_diff_vs_float_w4", "file_bytes")}, indent=1))
    for r in rows:
        print(f"{r['file']:14s} threads {r['threads']} batch {r['batch']:3d}: {1e3 * r['latency_s']:8.3f} ms, "
              f"speed-up {r['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
