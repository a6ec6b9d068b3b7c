"""Export of learnq models to other runtimes. ONNX (QuantizeLinear/DequantizeLinear graphs that onnxruntime runs):
:func:`to_onnx`, :func:`run_onnx`, :func:`evaluate_onnx`; see docs/export.md.

The ``onnx`` and ``onnxruntime`` packages are optional (``pip install 'learnq[onnx]'``): importing this package
does not need them, exporting does.
"""

from __future__ import annotations

from learnq.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, evaluate_onnx, run_onnx, to_onnx
from learnq.export.report import ExportReport, TensorExport

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportReport", "TensorExport", "evaluate_onnx", "run_onnx",
           "to_onnx"]
