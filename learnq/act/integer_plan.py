"""The plan of the integer deployment target (:mod:`learnq.act.integer_graph`): which tensors of a model an integer
engine quantizes (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", §2-3). The model is traced with the exporter's ``torch.fx`` trace (:mod:`learnq.fx_trace`: same node
names) and the plan walks the graph once:

* the integer ops are conv/linear layers, residual additions (``a + b`` of two tensors), concatenations
  (``torch.cat``: onnxruntime's QLinearConcat), global average pooling (``AdaptiveAvgPool(1)``:
  QLinearGlobalAveragePool) and average pooling (``AvgPool1d/2d`` without ``ceil_mode`` or ``divisor_override``, and
  an adaptive pool whose output size divides the input's: QLinearAveragePool); their tensor inputs must be quantized,
  so the tensor feeding one (the model input, a float op's output) gets an :class:`~learnq.act.integer.EdgeQuantizer`;
* an integer op's output gets an edge quantizer unless only the graph output reads it (the logits stay float), and
  a ReLU / ReLU6 that is its only reader is *fused*: the edge sits after the ReLU (its range starts at 0, so the
  zero point is 0 and the requantization's saturation is the ReLU; onnxruntime removes the Relu/Clip likewise);
* an activation quantizer of the model (PACT, the observer: a QAT-trained model) directly after such an op or its
  fused ReLU is fused the same way: its edge is observed on the quantizer's output (within its clipping range) and
  replaces its grid (QAT-then-PTQ of the activations); one elsewhere runs its fake quantization in float32;
* max pooling, flatten, reshape, identity and dropout keep the integer codes and the grid of their input; any other
  operation runs in float32 on the dequantized values.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from learnq.act.base import ActivationQuantizer
from learnq.fx_trace import trace_model
from learnq.layers import WEIGHT_LAYER_TYPES

EDGES = "integer_edges"  # the model attribute holding the edge quantizers
INTEGER_OPS = ("conv", "linear", "add", "concat", "gap", "avgpool")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RELUS = (nn.ReLU, nn.ReLU6)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_KEEP = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten)
_KEEP_METHODS = ("view", "reshape", "flatten", "contiguous")
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


class IntegerEdges(nn.ModuleDict):
    """The edge quantizers of a model (node name -> EdgeQuantizer). Its forward is the identity, so a model that
    is an ``nn.Sequential`` (which calls every child) computes the same, and a torch.fx trace inlines it away."""

    def forward(self, x: Any) -> Any:
        return x


def is_leaf(m: nn.Module) -> bool:
    """The modules a trace keeps as single calls: conv/linear layers and activation quantizers (the exporter's too)."""
    return isinstance(m, WEIGHT_LAYER_TYPES) or isinstance(m, ActivationQuantizer)


def trace(model: nn.Module, example: torch.Tensor | None = None) -> torch.fx.GraphModule:
    """The traced model, identity modules (folded BatchNorm, dropout) removed; node names are the exporter's. With
    ``example`` (one input batch) every node's output shape is recorded (``node.meta["tensor_meta"]``)."""
    gm = trace_model(model, is_leaf, "the integer target")
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _IDENTITY):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    if example is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(example[:1])
    return gm


@dataclass
class Step:
    """What the simulation does at one node: ``kind`` is "input", an integer op of :data:`INTEGER_OPS`, "relu" (fused
    or on codes), "actq" (a fused activation quantizer), "keep" (same codes and grid), "float"; ``edge``: the node
    whose edge quantizer gives its output grid (None: float output or the input's grid); ``why``: for the report."""

    kind: str
    edge: str | None = None
    why: str = ""


@dataclass
class Plan:
    steps: dict[str, Step] = field(default_factory=dict)
    edges: list[str] = field(default_factory=list)


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _shapes(node: torch.fx.Node) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, output shape) of a one-input node, when the trace recorded them."""
    src = node.args[0].meta.get("tensor_meta") if node.args and isinstance(node.args[0], torch.fx.Node) else None
    out = node.meta.get("tensor_meta")
    return None if src is None or out is None else (tuple(src.shape), tuple(out.shape))


def pool_window(m: nn.Module, node: torch.fx.Node) -> tuple[list[int], list[int], list[int], bool] | None:
    """(kernel, stride, padding, count_include_pad) of an average pooling node that QLinearAveragePool runs (1-d or
    2-d, no ``ceil_mode`` / ``divisor_override``; an adaptive pool whose output size divides the input's), else None."""
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
        n = 1 if isinstance(m, nn.AvgPool1d) else 2

        def tup(v: Any) -> list[int]:
            return [int(a) for a in v] if isinstance(v, (tuple, list)) else [int(v)] * n

        if m.ceil_mode or getattr(m, "divisor_override", None) is not None:
            return None
        stride = m.stride if m.stride not in (None, []) else m.kernel_size
        return tup(m.kernel_size), tup(stride), tup(m.padding), bool(m.count_include_pad)
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        shapes = _shapes(node)
        if shapes is None:
            return None
        ins, outs = shapes[0][2:], shapes[1][2:]
        if not all(o and i % o == 0 for i, o in zip(ins, outs, strict=True)):
            return None
        k = [i // o for i, o in zip(ins, outs, strict=True)]
        return k, k, [0] * len(k), True
    return None


def _kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    m = _module(gm, node)
    if m is not None:
        if isinstance(m, _CONV):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, _ADAPTIVE_AVG):
            size = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
            if all(s == 1 for s in size):
                return "gap"
            shapes = _shapes(node)
            if shapes is not None and shapes[0] == shapes[1]:
                return "keep"  # an adaptive pool to the input's own size is the identity
            return "avgpool" if pool_window(m, node) is not None else "float"
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            return "avgpool" if pool_window(m, node) is not None else "float"
        if isinstance(m, _RELUS):
            return "relu"
        if isinstance(m, ActivationQuantizer):
            return "actq"
        if isinstance(m, _KEEP):
            return "keep"
        return "float"
    if node.op == "call_function":
        if node.target in (operator.add, torch.add) and len(node.args) == 2 and all(
                isinstance(a, torch.fx.Node) for a in node.args) and not node.kwargs:
            return "add"
        if node.target in (torch.cat, torch.concat) and _concat_dim(node) is not None:
            return "concat"
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target in (torch.flatten, F.dropout):
            return "keep"
    if node.op == "call_method" and node.target in _KEEP_METHODS:
        return "keep"
    return "float"


def _concat_dim(node: torch.fx.Node) -> int | None:
    """The axis of a ``torch.cat`` of a list of traced tensors (None: not such a call)."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int) \
            or not all(isinstance(t, torch.fx.Node) for t in tensors):
        return None
    return dim


def make_plan(gm: torch.fx.GraphModule) -> Plan:
    """The plan of :mod:`this module <learnq.act.integer_plan>`'s docstring."""
    plan = Plan()
    state: dict[str, str] = {}  # node -> "q" (codes), "acc" (integer op, grid not decided yet), "float"
    fused_into: dict[str, str] = {}  # a fused ReLU / activation quantizer -> the integer op it is fused into
    steps = plan.steps

    def need_q(arg: torch.fx.Node) -> None:
        if state[arg.name] == "float":
            steps[arg.name].edge = arg.name
            steps[arg.name].why += "; quantized for the integer op that reads it"
            state[arg.name] = "q"
        elif state[arg.name] == "acc":
            steps[arg.name].edge = arg.name
            state[arg.name] = "q"

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            steps[node.name] = Step("input", node.name, "the model input, quantized for the integer ops")
            state[node.name] = "q"
            continue
        if node.op == "output":
            continue
        kind = _kind(gm, node)
        args = list(node.all_input_nodes)
        if kind in INTEGER_OPS:
            for a in args:
                need_q(a)
            steps[node.name] = Step(kind, None, "integer kernel")
            state[node.name] = "acc"
        elif kind in ("relu", "actq") and args and len(args[0].users) == 1 and (
                state[args[0].name] == "acc" or args[0].name in fused_into):
            producer = fused_into.get(args[0].name, args[0].name)
            for name, into in fused_into.items():  # the chain's earlier links now pass through to this edge
                if into == producer:
                    steps[name].edge = node.name
            what = "the requantization saturates" if kind == "relu" else \
                "its clamp is the requantization's saturation, its grid the calibrated edge's"
            steps[node.name] = Step(kind, node.name, f"fused into {producer}: {what}")
            steps[producer].edge = node.name
            fused_into[node.name] = producer
            state[producer] = state[node.name] = "q"
        elif kind in ("relu", "keep") and args and state[args[0].name] in ("q", "acc"):
            need_q(args[0])
            steps[node.name] = Step(kind, None, "on the integer codes, the input's grid")
            state[node.name] = "q"
        else:
            for a in args:
                if state.get(a.name) == "acc":
                    need_q(a)
            steps[node.name] = Step("float", None, "no integer kernel for this operation: float32")
            state[node.name] = "float"
    for node in gm.graph.nodes:  # integer ops nobody quantized yet: quantized unless only the output reads them
        if state.get(node.name) == "acc":
            if all(u.op == "output" for u in node.users):
                steps[node.name].why = "integer kernel, float output (the graph output reads it)"
                state[node.name] = "float"
            else:
                need_q(node)
    plan.edges = [name for name, s in steps.items() if s.edge == name]
    return plan


__all__ = ["EDGES", "INTEGER_OPS", "IntegerEdges", "Plan", "Step", "is_leaf", "make_plan", "pool_window", "trace"]
