"""Which layers of an exported ONNX graph onnxruntime runs in integer kernels, read from the graph onnxruntime
itself writes after its optimisations (``SessionOptions.optimized_model_filepath``), and why the others stay float.

No paper. onnxruntime names a fused node after the node it replaces (``stem.conv/Conv`` becomes the QLinearConv
``stem.conv/Conv_token_1``), so every compute node learnq wrote (Conv, Gemm, MatMul, Add, Concat, GlobalAveragePool,
AveragePool) is found again in the optimised graph and its operator type says integer or float. The reason for a
float one comes from the integer target's plan when the model has one (:mod:`learnq.act.integer_graph`), else from
where learnq's Q/DQ sits (at layer inputs only: a layer's output is not quantized, so no integer kernel can produce
it).
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from typing import Any

#: operators of onnxruntime's optimised graph that compute on integers
INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                         "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "MatMulInteger",
                         "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits",
                         "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax"})
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "GlobalAveragePool", "AveragePool")
_LEGACY_REASON = ("learnq's Q/DQ sits at layer inputs only: this op's output is not quantized, so onnxruntime keeps "
                  "a float {op} (quantize with target='onnxruntime' for integer kernels)")


def optimized_graph(path: str | os.PathLike, threads: int = 1) -> Any:
    """The ONNX graph onnxruntime runs for ``path`` (all optimisations, CPU)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def node_counts(graph: Any) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in graph.node))


def runtime_layers(path: str | os.PathLike, reasons: dict[str, str] | None = None) -> tuple[list[dict[str, Any]],
                                                                                             dict[str, int]]:
    """Per compute node of the file: ``{"layer", "op", "runtime_op", "integer", "reason"}``, and the node counts of
    the optimised graph. ``reasons``: node label -> why it is float (the integer target's plan)."""
    import onnx

    written = [n for n in onnx.load(str(path)).graph.node if n.op_type in COMPUTE_OPS]
    optimized = optimized_graph(path)
    rows = []
    for n in written:
        found = [m.op_type for m in optimized.node if m.name == n.name or m.name.startswith(n.name + "_")]
        runtime_op = next((op for op in found if op in INTEGER_OPS), found[0] if found else None)
        label = n.name.rpartition("/")[0] or n.name
        integer = runtime_op in INTEGER_OPS
        if integer:
            reason = f"onnxruntime runs {runtime_op}"
        elif runtime_op is None:
            reason = "fused into a neighbouring node by onnxruntime"
        elif reasons is not None:
            reason = reasons.get(label) or "float in the integer plan"
        else:
            reason = _LEGACY_REASON.format(op=runtime_op)
        rows.append({"layer": label, "op": n.op_type, "runtime_op": runtime_op, "integer": integer, "reason": reason})
    return rows, node_counts(optimized)


__all__ = ["COMPUTE_OPS", "INTEGER_OPS", "node_counts", "optimized_graph", "runtime_layers"]
