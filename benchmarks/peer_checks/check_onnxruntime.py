"""onnxruntime's own static quantization: quantize_static in QDQ and QOperator formats, per channel.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy

from peers_smoke import Setup, disk_bytes, export_float_onnx, onnx_summary, ort_accuracy


def import_onnxruntime():
    from onnxruntime.quantization import quantize_static  # noqa: F401


def run_onnxruntime(s: Setup, rec) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    d = s.artifact("onnxruntime")
    export_float_onnx(copy.deepcopy(s.model), s.x_test[:1], d / "float.onnx")
    quant_pre_process(str(d / "float.onnx"), str(d / "float_pre.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x.numpy()} for x in s.calib_batches()])

        def get_next(self):
            return next(self.batches, None)

    cases = [("QDQ per-channel MinMax W8A8", QuantFormat.QDQ, True, QuantType.QInt8, CalibrationMethod.MinMax),
             ("QOperator per-channel MinMax W8A8", QuantFormat.QOperator, True, QuantType.QInt8,
              CalibrationMethod.MinMax),
             ("QDQ per-tensor Entropy W8A8", QuantFormat.QDQ, False, QuantType.QInt8, CalibrationMethod.Entropy),
             ("QDQ per-channel MinMax W4(QInt4)A8", QuantFormat.QDQ, True, QuantType.QInt4, CalibrationMethod.MinMax)]
    for name, fmt, per_channel, wtype, method in cases:
        with rec.check("onnxruntime", f"quantize_static {name}") as row:
            out = d / (name.replace(" ", "_").replace("/", "") + ".onnx")
            quantize_static(str(d / "float_pre.onnx"), str(out), Reader(), quant_format=fmt, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=wtype, calibrate_method=method)
            row.acc_artifact = ort_accuracy(out, s.x_test, s.y_test)
            row.bytes, row.stores = disk_bytes(out), onnx_summary(out)
            import onnx

            row.note = "ops " + ",".join(sorted({n.op_type for n in onnx.load(str(out)).graph.node}))
