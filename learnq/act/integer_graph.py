"""The integer deployment target (``learnq.ptq.quantize(..., target="onnxruntime")``): which tensors of a model an
integer engine quantizes, and learnq's simulation of what the engine computes on them (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", §2-3; the kernels
are :mod:`learnq.act.integer`).

What is quantized is the *plan* (:mod:`learnq.act.integer_plan`): every tensor an integer kernel reads or writes
carries an :class:`~learnq.act.integer.EdgeQuantizer`, calibrated here (min/max over the calibration set, or a
clipping rule of :mod:`learnq.clipping` on its range: the PTQ method's activation rule).

The edge quantizers live in ``model.integer_edges`` (an ``nn.ModuleDict`` keyed by node name: they save, copy and move
with the model) and a forward hook on the model replaces its output with the simulation's (the float forward still
runs first; its result is discarded). The model file records the target through :mod:`learnq.fields.integer_target`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from learnq.act.integer import (
    EdgeQuantizer,
    QValue,
    integer_layer,
    qlinear_add,
    qlinear_average_pool,
    qlinear_concat,
    qlinear_global_average_pool,
    quantize_linear,
)
from learnq.act.integer_plan import EDGES, IntegerEdges, Plan, Step, is_leaf, make_plan, pool_window, trace
from learnq.batches import calibration_batches
from learnq.errors import ModelError
from learnq.fx_trace import module_label
from learnq.quantized import quantized_parameters

TARGETS = ("onnxruntime",)


def attach_integer_target(model: nn.Module, calibration_data: Any, *, device: str = "cpu", batch_size: int = 256,
                          clip: str = "minmax", seed: int = 0, **clip_options: Any) -> Plan:
    """Plan the integer graph of ``model`` (eval mode, weights already quantized), put an edge quantizer on every
    planned tensor, calibrate them over ``calibration_data`` (float activations; the range min/max, or narrowed by
    clipping rule ``clip`` with ``clip_options``, see :meth:`EdgeQuantizer.finish`) and switch the model's forward to
    the integer simulation. Returns the plan."""
    detach_integer_target(model)
    batches = list(calibration_batches(calibration_data, batch_size))
    gm = trace(model, batches[0][0].to(device) if batches else None)
    plan = make_plan(gm)
    sample = 0 if clip == "minmax" and not clip_options else 32768
    edges = IntegerEdges({name: EdgeQuantizer(sample_size=sample, seed=seed) for name in plan.edges})
    model.add_module(EDGES, edges)
    model.to(device)

    class _Observe(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in edges:
                edges[n.name].observe(out)
            return out

    with torch.no_grad():
        for x, _ in batches:
            _Observe(gm).run(x.to(device))
    for q in edges.values():
        q.finish(clip, **clip_options)
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
        elif step.kind in ("gap", "avgpool", "concat") and step.edge is None:  # float output: the graph's
            fargs = torch.fx.graph.map_arg(node.args, lambda n: deq(env[n.name]))
            env[node.name] = _run_float(gm, node, fargs, dict(node.kwargs))
        elif step.kind == "gap":
            s, z = grid(step.edge)
            env[node.name] = QValue(qlinear_global_average_pool(args[0], s, z), s, z)
        elif step.kind == "avgpool":
            s, z = grid(step.edge)
            window = pool_window(gm.get_submodule(str(node.target)), node)
            if window is None:
                raise ModelError(f"the integer simulation lost the pooling window of {node.name!r}; quantize again")
            env[node.name] = QValue(qlinear_average_pool(args[0], *window, s, z), s, z)
        elif step.kind == "concat":
            s, z = grid(step.edge)
            values = [env[n.name] for n in node.all_input_nodes]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            env[node.name] = QValue(qlinear_concat(values, int(dim) % values[0].codes.ndim, s, z), s, z)
        elif step.kind in ("relu", "actq") and isinstance(args[0], QValue):
            v = args[0]
            if step.edge is None:  # not fused: on the codes
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
    return integer_layer(m, module_label(str(node.target)), x, qts, None if step.edge is None else grid(step.edge))


__all__ = ["EDGES", "TARGETS", "IntegerEdges", "Plan", "Step", "attach_integer_target", "detach_integer_target",
           "enable", "float_forward", "has_integer_target", "is_leaf", "make_plan", "simulate", "trace"]
