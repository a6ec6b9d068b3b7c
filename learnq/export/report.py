"""What an ONNX export wrote: one record per quantized tensor (Q/DQ, or float / emulated and why) and a summary.

No paper. :class:`ExportReport` is what :func:`learnq.export.to_onnx` returns and ``learnq export --json`` prints
(``to_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EXPORTS = ("qdq", "float", "emulated", "matmulnbits")


@dataclass
class TensorExport:
    """One quantized tensor of the model as the ONNX graph carries it.

    kind: ``"weight"`` (a quantized parameter, ``name`` its parameter name) or ``"activation"`` (an activation
    quantizer, ``name`` its module name). export: ``"qdq"`` (integer codes/QuantizeLinear + DequantizeLinear),
    ``"float"`` (a weight written as its dequantized float32 values ŵ) or ``"emulated"`` (an activation quantizer
    written as float32 Div/Round/Clip/Mul). dtype: the ONNX integer type of the codes for ``qdq``.
    exact: the values the graph computes equal learnq's bit for bit (weights: checked on the tensor; activations:
    the same float32 formula); otherwise ``max_abs_error`` bounds the difference (float32 rounding of a nonzero zero
    point). reason: why the tensor is not Q/DQ (None for ``qdq``).
    """

    name: str
    kind: str
    export: str
    bits: int | None
    granularity: str
    dtype: str | None = None
    exact: bool = True
    max_abs_error: float = 0.0
    reason: str | None = None


@dataclass
class ExportReport:
    """The result of an export.

    tensors: every quantized weight and activation quantizer, in graph order. unquantized: float parameters that
    learnq did not quantize (written as float32 initializers). node_counts: ONNX operator -> number of nodes.
    check: with ``verify``, onnxruntime's output on the example input against the model's
    (``max_abs_diff``, ``argmax_agreement``, ``n``). layers (with ``verify``): per compute node, whether onnxruntime
    runs it in an integer kernel and why not (:mod:`learnq.export.runtime_report`); runtime_node_counts: the
    operators of onnxruntime's optimised graph.
    """

    path: str
    opset: int
    input_shape: list[Any]
    output_shape: list[Any]
    tensors: list[TensorExport] = field(default_factory=list)
    unquantized: list[str] = field(default_factory=list)
    node_counts: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0
    check: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    runtime_node_counts: dict[str, int] = field(default_factory=dict)

    @property
    def qdq(self) -> list[TensorExport]:
        """The tensors carried as Q/DQ."""
        return [t for t in self.tensors if t.export == "qdq"]

    @property
    def not_qdq(self) -> list[TensorExport]:
        """The quantized tensors ONNX's Q/DQ could not carry (float weights, emulated activations), with reasons."""
        return [t for t in self.tensors if t.export not in ("qdq", "matmulnbits")]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["not_qdq"] = [{"name": t.name, "kind": t.kind, "export": t.export, "reason": t.reason}
                          for t in self.not_qdq]
        return out

    def summary_lines(self) -> list[str]:
        """Human-readable lines: one per tensor, then the node counts."""
        lines = []
        for t in self.tensors:
            what = f"{t.export} {t.dtype}" if t.export == "qdq" else t.export
            bits = "" if t.bits is None else f" {t.bits}-bit"
            note = "" if t.exact else f" (to float32 rounding, max |error| {t.max_abs_error:.3g})"
            why = f": {t.reason}" if t.reason else ""
            lines.append(f"  {t.kind:10s} {t.name}:{bits} {t.granularity} -> {what}{note}{why}")
        for row in self.layers:
            kind = "integer" if row["integer"] else "float"
            lines.append(f"  layer      {row['layer']} ({row['op']}): {kind} in onnxruntime "
                         f"({row['runtime_op']}): {row['reason']}")
        return lines


__all__ = ["EXPORTS", "ExportReport", "TensorExport"]
