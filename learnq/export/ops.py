"""The torch operations learnq's ONNX writer knows, each written as ONNX operators (opset >= 13): the modules of
:mod:`learnq.export.module_ops`, and these functions and tensor methods: + - * / (tensors and Python numbers),
matmul, cat, flatten, view/reshape (the batch size as ``x.size(0)``/``x.shape[0]``), mean, relu/sigmoid/tanh/softmax,
transpose/permute, squeeze/unsqueeze, contiguous/clone/detach, dropout. Anything else raises ModelError naming the
operation.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F

from learnq.errors import ModelError
from learnq.export.module_ops import adaptive_pool, as_tuple, convert_module, flatten, gelu

if TYPE_CHECKING:  # annotations only: the graph writer calls this module
    from learnq.export.graph import GraphWriter


class Dim(int):
    """A size read from a tensor (``x.size(i)``); ``batch`` is True for dimension 0, which the graph keeps dynamic."""

    batch: bool = False


def _dim(value: int, index: int) -> Dim:
    d = Dim(value)
    d.batch = index == 0
    return d


def _tensor(w: GraphWriter, v: Any, what: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, Dim) and v.batch and w.dynamic_batch:
        raise ModelError(f"{what}: arithmetic with the batch size cannot be exported with a dynamic batch size")
    if isinstance(v, (bool, int, float)):
        return w.b.scalar(float(v))
    raise ModelError(f"{what}: operand of type {type(v).__name__} cannot be exported")


def _binary(op: str, py: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def run(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        a, c = args[0], args[1]
        if not isinstance(a, str) and not isinstance(c, str):  # Python numbers (sizes)
            if any(isinstance(v, Dim) and v.batch for v in (a, c)) and w.dynamic_batch:
                raise ModelError(f"{node.name}: arithmetic with the batch size cannot be exported with a dynamic "
                                 "batch size")
            return py(a, c)
        alpha = kwargs.get("alpha", 1)
        if alpha != 1:
            c = w.b.op("Mul", [_tensor(w, c, node.name), w.b.scalar(alpha)], node.name)
        return w.b.op(op, [_tensor(w, a, node.name), _tensor(w, c, node.name)], node.name)

    return run


def _resolve_shape(w: GraphWriter, node: torch.fx.Node, dims: Any) -> list[int]:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, Dim) and d.batch and w.dynamic_batch:
            if i != 0:
                raise ModelError(f"{node.name}: the batch size is used at position {i} of a shape; only position 0 "
                                 "can stay dynamic")
            out.append(0)
        elif isinstance(d, int):
            out.append(int(d))
        else:
            raise ModelError(f"{node.name}: shape entry {d!r} cannot be exported")
    return out


def _reshape(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    return w.b.op("Reshape", [args[0], w.b.ints(_resolve_shape(w, node, args[1:]))], node.name)


def _size(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    shape = w.shape(node.args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:
        return tuple(_dim(s, i) for i, s in enumerate(shape))
    return _dim(shape[dim], dim % len(shape))


def _getattr(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    if args[1] == "shape" and isinstance(args[0], str):
        return _size(w, node, (args[0],), {})
    raise ModelError(f"{node.name}: attribute {args[1]!r} of a tensor cannot be exported")


def _getitem(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    if isinstance(args[0], (tuple, list)):
        return args[0][args[1]]
    raise ModelError(f"{node.name}: indexing a tensor cannot be exported (slice it with a module instead)")


def _flatten_fn(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return flatten(w, args[0], w.shape(node.args[0]), start, end, node.name)


def _cat(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return w.b.op("Concat", [_tensor(w, t, node.name) for t in args[0]], node.name, axis=int(dim))


def _mean(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = int(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    rank = len(w.shape(node.args[0]))
    axes = list(range(rank)) if dim is None else [int(d) % rank for d in as_tuple(dim, 1)]
    if w.opset >= 18:
        return w.b.op("ReduceMean", [args[0], w.b.ints(axes, "axes")], node.name, keepdims=keep)
    return w.b.op("ReduceMean", [args[0]], node.name, axes=axes, keepdims=keep)


def _unary(op: str, **attrs: Any) -> Callable[..., str]:
    def run(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
        return w.b.op(op, [args[0]], node.name, **attrs)

    return run


def _softmax(op: str) -> Callable[..., str]:
    def run(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        return w.b.op(op, [args[0]], node.name, axis=int(dim if dim is not None else -1))

    return run


def _clip(lo: float, hi: float) -> Callable[..., str]:
    def run(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
        return w.b.op("Clip", [args[0], w.b.scalar(lo), w.b.scalar(hi)], node.name)

    return run


def _identity(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    return args[0]


def _transpose(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    rank = len(w.shape(node.args[0]))
    if node.target == "permute" or len(args) != 3:
        perm = [int(p) % rank for p in (args[1] if len(args) == 2 else args[1:])]
    else:
        perm = list(range(rank))
        i, j = int(args[1]) % rank, int(args[2]) % rank
        perm[i], perm[j] = perm[j], perm[i]
    return w.b.op("Transpose", [args[0]], node.name, perm=perm)


def _squeeze(op: str) -> Callable[..., str]:
    def run(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            return w.b.op(op, [args[0]], node.name)
        return w.b.op(op, [args[0], w.b.ints([int(d) for d in as_tuple(dim, 1)], "axes")], node.name)

    return run


def _gelu_fn(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    return gelu(w, args[0], kwargs.get("approximate", "none"), node.name)


def _adaptive_fn(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    size = args[1] if len(args) > 1 else kwargs["output_size"]
    return adaptive_pool(w, w.shape(node.args[0]), size, node.name, args[0], "AveragePool")


_ADD, _SUB, _MUL, _DIV = (_binary("Add", operator.add), _binary("Sub", operator.sub), _binary("Mul", operator.mul),
                          _binary("Div", operator.truediv))
FUNCTIONS: dict[Any, Callable[..., Any]] = {
    operator.add: _ADD, torch.add: _ADD, operator.sub: _SUB, torch.sub: _SUB, operator.mul: _MUL, torch.mul: _MUL,
    operator.truediv: _DIV, torch.div: _DIV, operator.floordiv: _binary("Div", operator.floordiv),
    operator.matmul: _binary("MatMul", operator.matmul), torch.matmul: _binary("MatMul", operator.matmul),
    operator.neg: _unary("Neg"), torch.cat: _cat, torch.flatten: _flatten_fn, torch.mean: _mean,
    torch.relu: _unary("Relu"), F.relu: _unary("Relu"), F.relu6: _clip(0.0, 6.0), torch.sigmoid: _unary("Sigmoid"),
    F.sigmoid: _unary("Sigmoid"), torch.tanh: _unary("Tanh"), F.tanh: _unary("Tanh"), F.gelu: _gelu_fn,
    F.softmax: _softmax("Softmax"), torch.softmax: _softmax("Softmax"), F.log_softmax: _softmax("LogSoftmax"),
    F.dropout: _identity, F.adaptive_avg_pool2d: _adaptive_fn, F.adaptive_avg_pool1d: _adaptive_fn,
    builtins.getattr: _getattr, operator.getitem: _getitem,
}
METHODS: dict[str, Callable[..., Any]] = {
    "view": _reshape, "reshape": _reshape, "flatten": _flatten_fn, "size": _size, "mean": _mean,
    "add": _ADD, "sub": _SUB, "mul": _MUL, "div": _DIV, "relu": _unary("Relu"), "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"), "softmax": _softmax("Softmax"), "contiguous": _identity, "clone": _identity,
    "detach": _identity, "transpose": _transpose, "permute": _transpose, "squeeze": _squeeze("Squeeze"),
    "unsqueeze": _squeeze("Unsqueeze"),
}


def _get_attr(w: GraphWriter, node: torch.fx.Node) -> str:
    value = _attribute(w, str(node.target))
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ModelError(f"attribute {w.label(str(node.target))!r} is not a float tensor; it cannot be exported")
    return w.param(w.label(str(node.target)), value)


def _attribute(w: GraphWriter, target: str) -> Any:
    obj: Any = w.gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def convert(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """The ONNX tensor name (or, for sizes, the Python value) of one traced node."""
    if node.op == "call_module":
        return convert_module(w, node, args, kwargs)
    if node.op == "get_attr":
        return _get_attr(w, node)
    if node.op == "call_function":
        fn = FUNCTIONS.get(node.target)
        what = getattr(node.target, "__name__", str(node.target))
    else:
        fn = METHODS.get(str(node.target))
        what = f"Tensor.{node.target}"
    if fn is None:
        raise ModelError(f"operation {what} (node {node.name!r}) has no ONNX translation in learnq's exporter; "
                         "supported operations are listed in learnq/export/ops.py")
    if node.op == "call_function" and node.target in (F.relu, F.dropout, torch.relu) and kwargs.get("inplace"):
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    return fn(w, node, args, kwargs)


__all__ = ["FUNCTIONS", "METHODS", "Dim", "convert", "convert_module"]
