"""learnq's own ONNX graph writer: a ``torch.fx`` trace of the model, one ONNX node (or a few) per traced call,
with learnq's quantized parameters as integer codes + DequantizeLinear and its activation quantizers as
QuantizeLinear -> DequantizeLinear pairs (ONNX operators, opset >= 13; the Q/DQ rules are in
:mod:`learnq.export.qdq`).

The trace keeps conv/linear layers, standard ``torch.nn`` modules and activation quantizers as single calls; the
example input is run through the traced graph once (:class:`_Recorder`), which gives every value's shape and checks
that the trace computes what the model computes. A layer's input quantizer (:mod:`learnq.act`, applied by a
forward pre-hook that the trace does not see) is written in front of the layer; any other hook on a layer is
refused, as is any operation the writer does not know (:mod:`learnq.export.ops` lists them), with a ModelError
naming it. Only the batch dimension is dynamic (``dynamic_batch``); every other size is the example's.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from learnq.act.input_quant import ATTR, _input_hook
from learnq.act.integer_graph import float_forward, has_integer_target
from learnq.act.integer_plan import is_leaf
from learnq.errors import ModelError
from learnq.export import ops
from learnq.export.integer_ops import IntegerExport
from learnq.export.qdq import ActivationPlan, WeightPlan, plan_activation, plan_weight
from learnq.export.report import TensorExport
from learnq.fx_trace import module_label, trace_model
from learnq.grid import QuantizedTensor
from learnq.quantized import plain_state, quantized_parameters, tied_aliases

INPUT_TYPES = {torch.float32: 1, torch.int64: 7}
"""The example input's dtype -> ONNX TensorProto type (FLOAT; INT64 for token ids)."""


class Builder:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self, opset: int) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.proto = helper, numpy_helper, TensorProto
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._scalars: dict[tuple[str, float], str] = {}

    def fresh(self, base: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_.:/-]", "_", base) or "t"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def init(self, array: np.ndarray, base: str, dtype: str | None = None) -> str:
        """An initializer; ``dtype`` "int4"/"uint4" packs 4-bit codes (numpy holds them as int8/uint8)."""
        name = self.fresh(base)
        if dtype in ("int4", "uint4"):
            kind = self.proto.INT4 if dtype == "int4" else self.proto.UINT4
            tensor = self.helper.make_tensor(name, kind, list(array.shape), array.reshape(-1).astype(np.int32).tolist())
        else:
            # reshape: np.ascontiguousarray makes 0-dim arrays 1-dim, and onnxruntime fuses Add/pooling only with
            # scalar (0-dim) scales and zero points
            tensor = self.numpy_helper.from_array(np.ascontiguousarray(array).reshape(np.shape(array)), name)
        self.initializers.append(tensor)
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer (shared)."""
        key = ("f32", float(value))
        if key not in self._scalars:
            self._scalars[key] = self.init(np.array(value, dtype=np.float32), "const")
        return self._scalars[key]

    def ints(self, values: list[int], base: str = "shape") -> str:
        return self.init(np.array(values, dtype=np.int64), base)

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=self.fresh(f"{base}/{op_type}"), **attrs))
        return out


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n] = value
        return value


def trace(model: nn.Module, example: torch.Tensor) -> tuple[torch.fx.GraphModule, dict[torch.fx.Node, Any]]:
    """The traced model (wrapped in a root whose submodule ``net`` is the model) and every node's value on
    ``example``. ModelError when torch.fx cannot trace it or the trace computes something else."""
    gm = trace_model(model, is_leaf, "the ONNX exporter")
    rec = _Recorder(gm)
    with torch.no_grad():
        traced = rec.run(example)
        if has_integer_target(model):  # the trace is the float graph; the model's output is the integer simulation
            with float_forward(model):
                direct = model(example)
        else:
            direct = model(example)
    same = (torch.equal(traced, direct) if isinstance(direct, torch.Tensor) and isinstance(traced, torch.Tensor)
            else all(torch.equal(a, b) for a, b in zip(traced, direct, strict=True)))
    if not same:
        raise ModelError(f"the torch.fx trace of {type(model).__name__} does not compute what the model computes "
                         "(a side effect or control flow the trace cannot see); learnq cannot export it")
    return gm, rec.values


class GraphWriter:
    """Turns a traced model into ONNX nodes; ``run()`` returns (graph inputs, outputs, records)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, opset: int, *, dynamic_batch: bool = True,
                 input_name: str = "input", output_name: str = "output", matmul_nbits: bool = False) -> None:
        self.model, self.example, self.opset = model, example, opset
        self.dynamic_batch = dynamic_batch
        self.input_name, self.output_name = input_name, output_name
        self.b = Builder(opset)
        self.qts: dict[str, QuantizedTensor] = dict(quantized_parameters(model))
        self.records: list[TensorExport] = []
        self.unquantized: list[str] = []
        self._params: dict[str, str] = {}
        # a tied parameter (a language model's token embedding and output layer) is one initializer, first name
        self._tied = tied_aliases(model, list(plain_state(model)))
        self._acts: dict[tuple[str, str], str] = {}
        self.gm: torch.fx.GraphModule | None = None
        self.values: dict[torch.fx.Node, Any] = {}
        self.integer: IntegerExport | None = IntegerExport(model, example) if has_integer_target(model) else None
        self.matmul_nbits = matmul_nbits  # 4-bit group weights of linear layers as MatMulNBits (export/nbits.py)
        self.domains: set[str] = set()  # operator domains besides ONNX's (com.microsoft for MatMulNBits)

    # -- lookups used by the op converters -------------------------------------------------------------------------
    def module(self, target: str) -> nn.Module:
        assert self.gm is not None
        return self.gm.get_submodule(target)

    @staticmethod
    def label(target: str) -> str:
        """The model's own name of a traced module/attribute (the root wraps the model as ``net``)."""
        return module_label(target)

    def shape(self, arg: Any) -> tuple[int, ...]:
        value = self.values.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"the exporter needs a tensor here, got {arg!r}")
        return tuple(value.shape)

    # -- parameters and quantizers --------------------------------------------------------------------------------
    def param(self, label: str, value: torch.Tensor) -> str:
        """The ONNX tensor of parameter ``label``: DequantizeLinear over integer codes when it is quantized and ONNX
        can carry its grid, else its float32 values (ŵ for a quantized one, with a record saying why)."""
        label = self._tied.get(label, label)
        if label in self._params:
            return self._params[label]
        qt = self.qts.get(label)
        if qt is None:
            self.unquantized.append(label)
            name = self.b.init(value.detach().float().cpu().numpy(), label)
        else:
            plan = plan_weight(qt, self.opset)
            gran = str(qt.granularity)
            if isinstance(plan, WeightPlan):
                name = self._dequantize(label, plan)
                self.records.append(TensorExport(label, "weight", "qdq", qt.bits, gran, plan.dtype, plan.exact,
                                                 plan.max_abs_error))
            else:
                name = self.b.init(qt.dequantize().detach().float().cpu().numpy(), label)
                self.records.append(TensorExport(label, "weight", "float", qt.bits, gran, None, True, 0.0, plan))
        self._params[label] = name
        return name

    def _dequantize(self, label: str, plan: WeightPlan) -> str:
        b = self.b
        codes = b.init(plan.codes, f"{label}_quantized", plan.dtype)
        scale = b.init(plan.scale, f"{label}_scale")
        zp = b.init(plan.zero_point, f"{label}_zero_point", plan.dtype)
        attrs = {} if plan.axis is None else {"axis": plan.axis}
        out = b.op("DequantizeLinear", [codes, scale, zp], f"{label}_dequantized", **attrs)
        if plan.grouped:
            numel = int(np.prod(plan.shape))
            out = b.op("Reshape", [out, b.ints([-1])], f"{label}_flat")
            if plan.codes.size != numel:
                out = b.op("Slice", [out, b.ints([0]), b.ints([numel])], f"{label}_cut")
            out = b.op("Reshape", [out, b.ints(list(plan.shape))], f"{label}_dequantized")
        return out

    def activation(self, label: str, module: nn.Module, x: str, rank: int) -> str:
        """``x`` through activation quantizer ``module`` (Q/DQ, or emulated in float32)."""
        key = (label, x)
        if key in self._acts:
            return self._acts[key]
        plan = plan_activation(module, label)
        gran = "tensor" if plan.channel_axis is None else f"axis:{plan.channel_axis}"
        dtype = plan.qtype
        self.records.append(TensorExport(label, "activation", "qdq" if dtype else "emulated", plan.bits, gran, dtype,
                                         True, 0.0, plan.reason))
        out = self._quantize_dequantize(label, plan, x, rank) if dtype else self._emulate(label, plan, x, rank)
        self._acts[key] = out
        return out

    def _quantize_dequantize(self, label: str, plan: ActivationPlan, x: str, rank: int) -> str:
        b = self.b
        np_type = np.uint8 if plan.qtype == "uint8" else np.int8
        attrs = {} if plan.channel_axis is None else {"axis": plan.channel_axis % rank}
        scale = b.init(plan.scale, f"{label}_scale")
        zp = b.init(plan.zero_point.astype(np_type), f"{label}_zero_point")
        q = b.op("QuantizeLinear", [x, scale, zp], f"{label}_quantized", **attrs)
        return b.op("DequantizeLinear", [q, scale, zp], f"{label}_dequantized", **attrs)

    def _emulate(self, label: str, plan: ActivationPlan, x: str, rank: int) -> str:
        b = self.b

        def const(a: np.ndarray, base: str) -> str:
            a = a.astype(np.float32)
            if plan.channel_axis is not None:
                shape = [1] * rank
                shape[plan.channel_axis % rank] = -1
                a = a.reshape(shape)
            return b.init(a, f"{label}_{base}")

        t = x
        has_offset, has_zp = bool((plan.offset != 0).any()), bool((plan.zero_point != 0).any())
        offset = const(plan.offset, "offset") if has_offset else None
        if offset:
            t = b.op("Sub", [t, offset], f"{label}_shifted")
        scale = const(plan.scale, "scale")
        t = b.op("Round", [b.op("Div", [t, scale], f"{label}_scaled")], f"{label}_rounded")
        zp = const(plan.zero_point, "zero_point") if has_zp else None
        if zp:
            t = b.op("Add", [t, zp], f"{label}_plus_zero_point")
        t = b.op("Clip", [t, b.scalar(plan.qmin), b.scalar(plan.qmax)], f"{label}_codes")
        if zp:
            t = b.op("Sub", [t, zp], f"{label}_minus_zero_point")
        t = b.op("Mul", [t, scale], f"{label}_dequantized")
        if offset:
            t = b.op("Add", [t, offset], f"{label}_dequantized")
        if plan.mask is not None:
            t = b.op("Mul", [t, const(plan.mask, "mask")], f"{label}_dequantized")
        return t

    def layer_input(self, label: str, module: nn.Module, x: str, rank: int) -> str:
        """The layer's input after its learnq input quantizer, if it has an enabled one; refuses other hooks."""
        hooks = list(module._forward_pre_hooks.values()) + list(module._forward_hooks.values())
        others = [h for h in hooks if h is not _input_hook]
        if others:
            raise ModelError(f"layer {label!r} has forward hook(s) {others} that the exporter cannot write to ONNX; "
                             "remove them first")
        q = getattr(module, ATTR, None)
        if q is not None and any(h is _input_hook for h in hooks) and q.enabled:
            return self.activation(f"{label}.{ATTR}" if label else ATTR, q, x, rank)
        return x

    # -- the graph --------------------------------------------------------------------------------------------------
    def run(self) -> tuple[Any, list[int | str], list[int | str]]:
        """Build the ONNX graph; returns (GraphProto, input shape, output shape)."""
        self.gm, self.values = trace(self.model, self.example)
        helper, proto = self.b.helper, self.b.proto
        env: dict[torch.fx.Node, Any] = {}
        in_shape: list[int | str] = list(self.example.shape)
        out_value: Any = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.input_name
                self.b._names.add(self.input_name)
                if self.integer is not None:
                    env[node] = self.integer.after(self, node, env[node])
            elif node.op == "output":
                out_value = node.args[0]
            else:
                args = torch.fx.graph.map_arg(node.args, lambda n: env[n])
                kwargs = torch.fx.graph.map_arg(node.kwargs, lambda n: env[n])
                if self.integer is not None and self.integer.fused(node):
                    env[node] = args[0]  # a ReLU fused into the integer op before it: the Q's saturation
                else:
                    env[node] = ops.convert(self, node, args, kwargs)
                if self.integer is not None:
                    env[node] = self.integer.after(self, node, env[node])
        if not isinstance(out_value, torch.fx.Node) or not isinstance(env.get(out_value), str):
            raise ModelError("the exporter writes models with one tensor output; this model returns "
                             f"{type(self.values.get(out_value, out_value)).__name__}")
        self.b.nodes.append(helper.make_node("Identity", [env[out_value]], [self.output_name], name="output"))
        out_shape: list[int | str] = list(self.values[out_value].shape)
        if self.dynamic_batch:
            in_shape[0] = out_shape[0] = "batch"
        for label, qt in self.qts.items():  # read as constants by a module that was traced through
            if self._tied.get(label, label) not in self._params:
                self.records.append(TensorExport(label, "weight", "float", qt.bits, str(qt.granularity), None, True,
                                                 0.0, "read by a module the exporter traced through: written as the "
                                                 "constant ŵ it computed with"))
        graph = helper.make_graph(
            self.b.nodes, "learnq",
            [helper.make_tensor_value_info(self.input_name, INPUT_TYPES[self.example.dtype], in_shape)],
            [helper.make_tensor_value_info(self.output_name, proto.FLOAT, out_shape)], initializer=self.b.initializers)
        return graph, in_shape, out_shape

    def node_counts(self) -> dict[str, int]:
        return dict(Counter(n.op_type for n in self.b.nodes))


__all__ = ["Builder", "GraphWriter", "trace"]
