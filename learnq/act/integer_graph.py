"""The integer deployment target (``learnq.ptq.quantize(..., target="onnxruntime")``): which tensors of a model an
integer engine quantizes, and learnq's simulation of what the engine computes on them (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", §2-3; the kernels
are :mod:`learnq.act.integer`).

The model is traced with ``torch.fx`` (the leaves are conv/linear layers and ``torch.nn`` modules, as for the ONNX
exporter, whose trace gives the same node names). The *plan* walks the graph once:

* the integer ops are conv/linear layers, residual additions (``a + b`` of two tensors), global average pooling
  (``AdaptiveAvgPool(1)``); their tensor inputs must be quantized, so the tensor feeding one (the model input, a
  float op's output) gets an :class:`~learnq.act.integer.EdgeQuantizer`;
* an integer op's output gets an edge quantizer unless only the graph output reads it (the logits stay float), and
  a ReLU / ReLU6 that is its only reader is *fused*: the edge sits after the ReLU (its range starts at 0, so the
  zero point is 0 and the requantization's saturation is the ReLU; onnxruntime removes the Relu/Clip likewise);
* max pooling, flatten, reshape, identity and dropout keep the integer codes and the grid of their input; any other
  operation runs in float32 on the dequantized values.

The edge quantizers live in ``model.integer_edges`` (an ``nn.ModuleDict`` keyed by node name: they save, copy and move
with the model) and a forward hook on the model replaces its output with the simulation's (the float forward still
runs first; its result is discarded). The model file records the target through :mod:`learnq.fields.integer_target`.
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
from learnq.act.integer import (
    EdgeQuantizer,
    QValue,
    integer_layer,
    qlinear_add,
    qlinear_global_average_pool,
    quantize_linear,
)
from learnq.batches import calibration_batches
from learnq.errors import ModelError
from learnq.layers import WEIGHT_LAYER_TYPES
from learnq.quantized import quantized_parameters

EDGES = "integer_edges"  # the model attribute holding the edge quantizers
TARGETS = ("onnxruntime",)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RELUS = (nn.ReLU, nn.ReLU6)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_KEEP = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten)
_KEEP_METHODS = ("view", "reshape", "flatten", "contiguous")


class IntegerEdges(nn.ModuleDict):
    """The edge quantizers of a model (node name -> EdgeQuantizer). Its forward is the identity, so a model that
    is an ``nn.Sequential`` (which calls every child) computes the same, and a torch.fx trace inlines it away."""

    def forward(self, x: Any) -> Any:
        return x


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, WEIGHT_LAYER_TYPES) or isinstance(m, ActivationQuantizer) or super().is_leaf_module(
            m, qualified_name)


class _Root(nn.Module):
    """The model as one submodule ``net`` (the exporter traces the same wrapper, so node names agree)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x)


def trace(model: nn.Module, example: torch.Tensor | None = None) -> torch.fx.GraphModule:
    """The traced model, identity modules (folded BatchNorm, dropout) removed; node names are the exporter's. With
    ``example`` (one input batch) every node's output shape is recorded (``node.meta["tensor_meta"]``)."""
    try:
        root = _Root(model)
        gm = torch.fx.GraphModule(root, _Tracer().trace(root))
    except Exception as exc:  # torch.fx raises many kinds
        raise ModelError(f"the integer target needs a torch.fx trace of {type(model).__name__}, which fails "
                         f"({type(exc).__name__}: {exc})") from exc
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
    """What the simulation does at one node: ``kind`` is "input", "conv", "linear", "add", "gap", "relu" (fused or
    on codes), "keep" (same codes and grid), "float"; ``edge``: the node whose edge quantizer gives its output grid
    (None: float output or the input's grid); ``why``: for the report."""

    kind: str
    edge: str | None = None
    why: str = ""


@dataclass
class Plan:
    steps: dict[str, Step] = field(default_factory=dict)
    edges: list[str] = field(default_factory=list)


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    m = _module(gm, node)
    if m is not None:
        if isinstance(m, _CONV):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            size = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
            if all(s == 1 for s in size):
                return "gap"
            src = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], torch.fx.Node) else None
            out = node.meta.get("tensor_meta")
            same = src is not None and out is not None and tuple(src.shape) == tuple(out.shape)
            return "keep" if same else "float"  # an adaptive pool to the input's own size is the identity
        if isinstance(m, _RELUS):
            return "relu"
        if isinstance(m, _KEEP):
            return "keep"
        return "float"
    if node.op == "call_function":
        if node.target in (operator.add, torch.add) and len(node.args) == 2 and all(
                isinstance(a, torch.fx.Node) for a in node.args) and not node.kwargs:
            return "add"
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target in (torch.flatten, F.dropout):
            return "keep"
    if node.op == "call_method" and node.target in _KEEP_METHODS:
        return "keep"
    return "float"


def make_plan(gm: torch.fx.GraphModule) -> Plan:
    """The plan of :mod:`this module <learnq.act.integer_graph>`'s docstring."""
    plan = Plan()
    state: dict[str, str] = {}  # node -> "q" (codes), "acc" (integer op, grid not decided yet), "float"
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
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if kind in ("conv", "linear", "add", "gap"):
            for a in args:
                need_q(a)
            steps[node.name] = Step(kind, None, "integer kernel")
            state[node.name] = "acc"
        elif kind == "relu" and args and state[args[0].name] == "acc" and len(args[0].users) == 1:
            steps[node.name] = Step("relu", node.name, f"fused into {args[0].name}: the requantization saturates")
            steps[args[0].name].edge = node.name
            state[args[0].name] = state[node.name] = "q"
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


def attach_integer_target(model: nn.Module, calibration_data: Any, *, device: str = "cpu",
                          batch_size: int = 256) -> Plan:
    """Plan the integer graph of ``model`` (eval mode, weights already quantized), put an edge quantizer on every
    planned tensor, calibrate them (min/max over ``calibration_data``, float activations) and switch the model's
    forward to the integer simulation. Returns the plan."""
    detach_integer_target(model)
    batches = list(calibration_batches(calibration_data, batch_size))
    gm = trace(model, batches[0][0].to(device) if batches else None)
    plan = make_plan(gm)
    edges = IntegerEdges({name: EdgeQuantizer() for name in plan.edges})
    model.add_module(EDGES, edges)
    model.to(device)
    values: dict[str, torch.Tensor] = {}

    class _Observe(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in edges:
                edges[n.name].observe(out)
            return out

    with torch.no_grad():
        for x, _ in batches:
            _Observe(gm).run(x.to(device))
    del values
    for q in edges.values():
        q.finish()
    if batches:  # every layer can run in the integer kernels (ModelError naming the one that cannot)
        with torch.no_grad():
            simulate(model, batches[0][0][:2].to(device))
    enable(model)
    return plan


def enable(model: nn.Module) -> None:
    """Route the model's output through the integer simulation (a forward hook; once)."""
    if not getattr(model, "_learnq_integer_hook", None):
        model._learnq_integer_hook = model.register_forward_hook(_hook)


def detach_integer_target(model: nn.Module) -> None:
    handle = getattr(model, "_learnq_integer_hook", None)
    if handle is not None:
        handle.remove()
        model._learnq_integer_hook = None
    if EDGES in model._modules:
        del model._modules[EDGES]


def has_integer_target(model: nn.Module) -> bool:
    return isinstance(getattr(model, EDGES, None), IntegerEdges)


def _hook(module: nn.Module, args: tuple, output: Any) -> Any:
    if not args or not isinstance(args[0], torch.Tensor) or getattr(module, "_learnq_integer_off", False):
        return output
    with torch.no_grad():
        return simulate(module, args[0])


class float_forward:
    """Context manager: the model computes its float forward (the exporter's trace check, calibration)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.model._learnq_integer_off = True
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model._learnq_integer_off = False


def simulate(model: nn.Module, x: torch.Tensor, codes: dict[str, QValue] | None = None) -> torch.Tensor:
    """The output of the integer graph on ``x`` (what onnxruntime computes from learnq's export). ``codes``, when
    given, receives every quantized tensor (node name -> QValue)."""
    edges: IntegerEdges = getattr(model, EDGES)
    gm = trace(model, x)
    plan = make_plan(gm)
    if set(plan.edges) != set(edges.keys()):
        raise ModelError("the model's graph no longer matches its integer target (edges "
                         f"{sorted(set(plan.edges) ^ set(edges.keys()))}); quantize it again")
    qts = dict(quantized_parameters(model))
    env: dict[str, Any] = {}
    out: Any = None

    def deq(v: Any) -> Any:
        return v.dequantize() if isinstance(v, QValue) else v

    def grid(name: str) -> tuple[torch.Tensor, int]:
        return QValue.grid_of(edges[name])

    for node in gm.graph.nodes:
        if node.op == "output":
            out = deq(env[node.args[0].name])
            break
        step = plan.steps[node.name]
        args = torch.fx.graph.map_arg(node.args, lambda n: env[n.name])
        if step.kind == "input":
            env[node.name] = quantize_linear(x, *grid(node.name))
            continue
        if step.kind in ("conv", "linear"):
            env[node.name] = _layer(gm, node, args[0], qts, step, grid)
        elif step.kind == "add":
            a, b = args
            if step.edge is None:
                env[node.name] = deq(a) + deq(b)
            else:
                s, z = grid(step.edge)
                env[node.name] = QValue(qlinear_add(a, b, s, z), s, z)
        elif step.kind == "gap":
            if step.edge is None:
                env[node.name] = _run_float(gm, node, (deq(args[0]),), {})
            else:
                s, z = grid(step.edge)
                env[node.name] = QValue(qlinear_global_average_pool(args[0], s, z), s, z)
        elif step.kind == "relu" and isinstance(args[0], QValue):
            v = args[0]
            if step.edge != node.name:  # not fused: on the codes
                v = QValue(v.codes.clamp(min=v.zp), v.scale, v.zp)
            env[node.name] = v
        elif step.kind == "keep" and isinstance(args[0], QValue):
            v = args[0]
            y = _run_float(gm, node, (v.codes.double(),) + tuple(args[1:]), dict(node.kwargs))
            env[node.name] = QValue(y.to(torch.int64), v.scale, v.zp)
        else:
            fargs = torch.fx.graph.map_arg(node.args, lambda n: deq(env[n.name]))
            fkwargs = torch.fx.graph.map_arg(node.kwargs, lambda n: deq(env[n.name]))
            env[node.name] = _run_float(gm, node, fargs, fkwargs)
        if step.edge == node.name and not isinstance(env[node.name], QValue):
            env[node.name] = quantize_linear(env[node.name], *grid(node.name))
    if codes is not None:
        codes.update({k: v for k, v in env.items() if isinstance(v, QValue)})
    return out


def _run_float(gm: torch.fx.GraphModule, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    raise ModelError(f"the integer simulation cannot run node {node.name!r} ({node.op})")


def _layer(gm: torch.fx.GraphModule, node: torch.fx.Node, x: QValue, qts: dict, step: Step, grid: Any) -> Any:
    m = gm.get_submodule(str(node.target))
    label = str(node.target).removeprefix("net.") if str(node.target) != "net" else ""
    return integer_layer(m, label, x, qts, None if step.edge is None else grid(step.edge))


__all__ = ["EDGES", "IntegerEdges", "TARGETS", "Plan", "Step", "attach_integer_target", "detach_integer_target",
           "enable", "float_forward", "has_integer_target", "make_plan", "simulate", "trace"]
