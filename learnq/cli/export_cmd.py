"""``learnq export MODEL_FILE --onnx FILE [--opset N] [--eval] [--json]``: a pipeline model file as an ONNX graph
with QuantizeLinear/DequantizeLinear nodes (learnq.export.to_onnx; docs/export.md).

The file's metadata (written by ``learnq train`` / ``run`` / ``quantize``) names the network and the data set: the
network is rebuilt and loaded (quantized weights and activation quantizers included) and exported with a batch of
test inputs as the example (onnxruntime checks the file on it). The command prints every quantized tensor and how
the graph carries it: Q/DQ, or float weights / emulated activations with the reason. ``--eval`` also evaluates the
ONNX file with onnxruntime and the model with learnq on the test split and prints both accuracies.
"""

from __future__ import annotations

import argparse
from typing import Any

from learnq.cli.common import add_common, print_json
from learnq.export.onnx import DEFAULT_OPSET, check_opset, check_output_path, evaluate_onnx, to_onnx
from learnq.pipeline.model_files import EVAL_BATCH, rebuild, resolve_model_file
from learnq.pipeline.train import evaluate

EXAMPLE_BATCH = 64


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model file to ONNX (QuantizeLinear/DequantizeLinear graph)",
        description="Rebuild the network of a model file written by learnq train/run/quantize and write it as an ONNX "
                    "graph that onnxruntime runs: quantized weights as integer codes + DequantizeLinear, 8-bit "
                    "activations as QuantizeLinear/DequantizeLinear; grids ONNX cannot express are written in float "
                    "and listed.")
    parser.add_argument("path", help="a model file (.safetensors) written by learnq train/run/quantize, or a run "
                                     "directory")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, 13..21 (default {DEFAULT_OPSET}; 21 stores 4-bit codes as int4 and codes "
                             "wider than 8 bits as int16)")
    parser.add_argument("--eval", action="store_true",
                        help="evaluate the ONNX file (onnxruntime) and the model (learnq) on the test split")
    parser.add_argument("--no-check", action="store_true",
                        help="do not run the file with onnxruntime on the example batch")
    add_common(parser)  # --seed and --quiet are accepted (every command takes them); the export draws nothing
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_opset(args.opset)
    out = check_output_path(args.onnx)
    src = resolve_model_file(args.path)
    model, splits, meta = rebuild(src, device="cpu")
    inputs = splits.test.tensors[0]
    report = to_onnx(model, inputs[:EXAMPLE_BATCH], out, opset=args.opset, verify=not args.no_check)
    result: dict[str, Any] = {"source": str(src), "model": meta["model"]["name"], **report.to_dict()}
    if args.eval:
        learnq_metrics = evaluate(model, splits.test, device="cpu", batch_size=EVAL_BATCH)
        onnx_metrics = evaluate_onnx(out, splits.test, batch_size=EVAL_BATCH)
        result["eval"] = {"learnq": learnq_metrics, "onnxruntime": onnx_metrics,
                          "accuracy_diff_points": 100 * (onnx_metrics["accuracy"] - learnq_metrics["accuracy"])}
    if args.json:
        print_json(result)
        return 0
    counts = report.node_counts
    print(f"{src} -> {out}: opset {report.opset}, {report.file_bytes} bytes, "
          f"{counts.get('QuantizeLinear', 0)} QuantizeLinear and {counts.get('DequantizeLinear', 0)} "
          "DequantizeLinear nodes")
    for line in report.summary_lines():
        print(line)
    if report.unquantized:
        print(f"  float parameters learnq did not quantize: {', '.join(report.unquantized)}")
    if report.not_qdq:
        print(f"{len(report.not_qdq)} quantized tensor(s) are not Q/DQ in the graph (float weights or emulated "
              "activations; the values are learnq's)")
    if report.check is not None:
        c = report.check
        print(f"onnxruntime on {c['n']} test inputs: max |difference| {c['max_abs_diff']:.3g} (graph as written: "
              f"{c['max_abs_diff_reference']:.3g}), same class for {100 * (c['argmax_agreement'] or 0):.1f}%")
    if args.eval:
        e = result["eval"]
        print(f"test accuracy: learnq {100 * e['learnq']['accuracy']:.2f}%, onnxruntime "
              f"{100 * e['onnxruntime']['accuracy']:.2f}% (n = {e['onnxruntime']['n']})")
    return 0
