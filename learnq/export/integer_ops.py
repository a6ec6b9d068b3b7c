"""ONNX export of a model quantized for the integer target (:mod:`learnq.act.integer_graph`): QuantizeLinear ->
DequantizeLinear on every planned tensor, int32 biases, so that onnxruntime's QDQ fusion turns every conv, gemm,
addition, concatenation and average pooling into an integer kernel (QLinearConv, QGemm, QLinearAdd, QLinearConcat,
QLinearGlobalAveragePool, QLinearAveragePool; ONNX QuantizeLinear-13 / DequantizeLinear-13 and the com.microsoft
contrib operators).

Where onnxruntime fuses, the pattern it looks for is ``DQ(x), DQ(w), DQ(b int32) -> Conv/Gemm [-> Relu/Clip] -> Q``
with one integer type (uint8) for input and output, a bias whose scale is ``s_x · s_w`` and zero point 0, and, for
max pooling / flatten / reshape between two integer ops, a Q/DQ pair with the *same* scale and zero point on both
sides (onnxruntime then drops it and runs the op on uint8). This module writes exactly that; :func:`layer_report`
says per layer whether it runs in an integer kernel and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
from torch import nn

from learnq.act.integer import weight_codes
from learnq.act.integer_plan import EDGES, INTEGER_OPS, IntegerEdges, Plan, make_plan, trace

if TYPE_CHECKING:
    from learnq.export.graph import GraphWriter

Grid = tuple[np.ndarray, np.ndarray]  # (float32 scale, uint8 zero point), 0-dim


class IntegerExport:
    """The integer plan of the model being exported and the grid of every quantized value written so far."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.edges: IntegerEdges = getattr(model, EDGES)
        self.plan: Plan = make_plan(trace(model, example))
        self.grids: dict[str, Grid] = {}  # export node name -> grid of its (Q/DQ'd) output
        self.rows: list[dict[str, Any]] = []

    def _grid(self, edge: str) -> Grid:
        g = self.edges[edge].grid()
        return (np.array(float(g.scale), dtype=np.float32), np.array(int(g.zero_point), dtype=np.uint8))

    def _qdq(self, w: GraphWriter, x: str, grid: Grid, base: str) -> str:
        scale = w.b.init(grid[0], f"{base}_scale")
        zp = w.b.init(grid[1], f"{base}_zero_point")
        q = w.b.op("QuantizeLinear", [x, scale, zp], f"{base}_quantized")
        return w.b.op("DequantizeLinear", [q, scale, zp], f"{base}_dequantized")

    def fused(self, node: torch.fx.Node) -> bool:
        """A ReLU / ReLU6 or an activation quantizer fused into the integer op before it: not written (zero point 0
        and a range within the ReLU6's make the QuantizeLinear's saturation the same function; onnxruntime drops such
        a Relu/Clip too; a fused activation quantizer's grid is replaced by the edge's)."""
        step = self.plan.steps.get(node.name)
        return step is not None and step.kind in ("relu", "actq") and step.edge is not None

    def after(self, w: GraphWriter, node: torch.fx.Node, out: Any) -> Any:
        """The ONNX output of ``node`` as the integer graph has it (Q/DQ'd on a planned edge, or after an op that
        keeps its input's grid)."""
        if not isinstance(out, str):
            return out
        step = self.plan.steps.get(node.name)
        srcs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if step is None:  # identity nodes the plan removed
            if srcs and srcs[0].name in self.grids:
                self.grids[node.name] = self.grids[srcs[0].name]
            return out
        if step.edge == node.name:
            self.grids[node.name] = self._grid(node.name)
            self._row(w, node, step)
            return self._qdq(w, out, self.grids[node.name], node.name)
        if step.kind in ("keep", "relu") and srcs and srcs[0].name in self.grids:
            self.grids[node.name] = self.grids[srcs[0].name]
            return self._qdq(w, out, self.grids[node.name], node.name)
        self._row(w, node, step)
        return out

    def _row(self, w: GraphWriter, node: torch.fx.Node, step: Any) -> None:
        if step.kind in INTEGER_OPS:
            srcs = node.all_input_nodes
            integer = all(self.input_grid(a) is not None for a in srcs) and (
                step.edge is not None or step.kind in ("conv", "linear"))
            self.rows.append({"node": node.name, "layer": w.label(str(node.target)) if node.op == "call_module"
                              else node.name, "op": step.kind, "integer": integer, "reason": step.why})

    def input_grid(self, node: torch.fx.Node) -> Grid | None:
        return self.grids.get(node.name) if isinstance(node, torch.fx.Node) else None

    def bias(self, w: GraphWriter, label: str, m: nn.Module, x_node: Any) -> str | None:
        """The layer's bias as int32 codes + DequantizeLinear (scale ``s_x · s_w``) when its input is quantized;
        None: the caller writes the float bias."""
        grid = self.input_grid(x_node)
        if m.bias is None or grid is None:
            return None
        _, ws = weight_codes(w.qts, label, m)
        sx = torch.tensor(grid[0], dtype=torch.float32)
        scale = (sx * ws.float()).reshape(-1)
        codes = torch.round(m.bias.detach().float().cpu() / scale).to(torch.int64)
        if bool((codes.abs() >= 2**31).any()):
            return None
        b = w.b
        q = b.init(codes.numpy().astype(np.int32), f"{label}.bias_quantized")
        s = b.init(scale.numpy().astype(np.float32), f"{label}.bias_scale")
        z = b.init(np.zeros(scale.numel(), dtype=np.int32), f"{label}.bias_zero_point")
        return b.op("DequantizeLinear", [q, s, z], f"{label}.bias_dequantized", axis=0)


def layer_report(integer: IntegerExport) -> list[dict[str, Any]]:
    """Per integer-capable op: whether onnxruntime can run it in an integer kernel and why."""
    return list(integer.rows)


__all__ = ["IntegerExport", "layer_report"]
