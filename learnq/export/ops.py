"""The torch operations learnq's ONNX writer knows, each written as ONNX operators (opset >= 13).

Modules: Conv1d/2d/3d and Linear (with learnq's quantized weights and input quantizers), learnq's activation
quantizers, ReLU, ReLU6, Hardtanh, LeakyReLU, Sigmoid, Tanh, SiLU, GELU, Hardswish, ELU, Softmax, LogSoftmax,
Identity, Dropout, Flatten, MaxPool, AvgPool, AdaptiveAvgPool (exact windows; non-divisible sizes as the averaging
matrices PyTorch's windows define), AdaptiveMaxPool (output 1 or divisible), BatchNorm (eval, running statistics),
LayerNorm (opset >= 17). Functions and tensor methods: + - * / (tensors and Python numbers), matmul, cat, flatten,
view/reshape (the batch size as ``x.size(0)``/``x.shape[0]``), mean, relu/sigmoid/tanh/softmax, transpose/permute,
squeeze/unsqueeze, contiguous/clone/detach, dropout. Anything else raises ModelError naming the operation.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from learnq.errors import ModelError
from learnq.export.qdq import is_activation_quantizer

if TYPE_CHECKING:
    from learnq.export.graph import GraphWriter


class Dim(int):
    """A size read from a tensor (``x.size(i)``); ``batch`` is True for dimension 0, which the graph keeps dynamic."""

    batch: bool = False


def _dim(value: int, index: int) -> Dim:
    d = Dim(value)
    d.batch = index == 0
    return d


def _tuple(v: Any, n: int) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v)] * n


def _pads(padding: Any, n: int) -> list[int]:
    p = _tuple(padding, n)
    return p + p


# -- modules -----------------------------------------------------------------------------------------------------
def _conv(w: GraphWriter, node: torch.fx.Node, m: nn.Module, label: str, x: str) -> str:
    n = m.weight.ndim - 2
    if m.padding_mode != "zeros":
        raise ModelError(f"layer {label!r} uses padding_mode={m.padding_mode!r}; the exporter writes 'zeros' only")
    k, dil = list(m.kernel_size), _tuple(m.dilation, n)
    if m.padding == "same":
        totals = [d * (kk - 1) for d, kk in zip(dil, k, strict=True)]
        pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
    elif m.padding == "valid":
        pads = [0] * (2 * n)
    else:
        pads = _pads(m.padding, n)
    x = w.layer_input(label, m, x, len(w.shape(node.args[0])))
    inputs = [x, w.param(f"{label}.weight", m.weight)]
    if m.bias is not None:
        inputs.append(w.param(f"{label}.bias", m.bias))
    return w.b.op("Conv", inputs, label or "conv", kernel_shape=k, strides=_tuple(m.stride, n), pads=pads,
                  dilations=dil, group=m.groups)


def _linear(w: GraphWriter, node: torch.fx.Node, m: nn.Module, label: str, x: str) -> str:
    rank = len(w.shape(node.args[0]))
    x = w.layer_input(label, m, x, rank)
    weight = w.param(f"{label}.weight", m.weight)
    bias = None if m.bias is None else w.param(f"{label}.bias", m.bias)
    if rank == 2:
        return w.b.op("Gemm", [x, weight] + ([bias] if bias else []), label or "linear", transB=1)
    out = w.b.op("MatMul", [x, w.b.op("Transpose", [weight], f"{label}_t", perm=[1, 0])], label or "linear")
    return w.b.op("Add", [out, bias], label or "linear") if bias else out


def _pool(w: GraphWriter, m: nn.Module, label: str, x: str, n: int, kind: str) -> str:
    k = _tuple(m.kernel_size, n)
    stride = _tuple(m.stride if m.stride not in (None, []) else m.kernel_size, n)
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": stride, "pads": _pads(m.padding, n),
                             "ceil_mode": int(m.ceil_mode)}
    if kind == "MaxPool":
        if m.return_indices:
            raise ModelError(f"{label!r}: max pooling with return_indices cannot be exported")
        attrs["dilations"] = _tuple(m.dilation, n)
    else:
        if m.divisor_override is not None:
            raise ModelError(f"{label!r}: average pooling with divisor_override cannot be exported")
        attrs["count_include_pad"] = int(m.count_include_pad)
    return w.b.op(kind, [x], label or kind, **attrs)


def _adaptive(w: GraphWriter, shape: tuple[int, ...], size: Any, label: str, x: str, kind: str) -> str:
    spatial = list(shape[2:])
    out = [s if o is None else int(o) for s, o in zip(spatial, _tuple(size, len(spatial)), strict=True)]
    if all(o == 1 for o in out):
        return w.b.op(f"Global{kind}", [x], label or kind)
    if all(s % o == 0 for s, o in zip(spatial, out, strict=True)):
        k = [s // o for s, o in zip(spatial, out, strict=True)]
        return w.b.op(kind, [x], label or kind, kernel_shape=k, strides=k)
    if kind == "MaxPool" or len(spatial) > 2:
        raise ModelError(f"{label!r}: adaptive {kind} from {spatial} to {out} (sizes that do not divide) cannot be "
                         "exported")
    for axis, (s, o) in enumerate(zip(spatial, out, strict=True)):  # PyTorch's windows [floor(i s/o), ceil((i+1) s/o))
        a = np.zeros((o, s), dtype=np.float32)
        for i in range(o):
            lo, hi = (i * s) // o, -(-((i + 1) * s) // o)
            a[i, lo:hi] = 1.0 / (hi - lo)
        last = axis == len(spatial) - 1
        mat = w.b.init(a.T if last else a, f"{label}_window{axis}")
        if last:
            x = w.b.op("MatMul", [x, mat], label or "adaptive_pool")
        else:  # (o, s) @ (..., s, W): pools the second-to-last axis
            x = w.b.op("MatMul", [mat, x], label or "adaptive_pool")
    return x


def _batchnorm(w: GraphWriter, m: nn.Module, label: str, x: str) -> str:
    if m.running_mean is None or m.running_var is None:
        raise ModelError(f"BatchNorm {label!r} has no running statistics (track_running_stats=False): it normalises "
                         "with batch statistics, which the exporter does not write")
    c = m.num_features
    weight = w.param(f"{label}.weight", m.weight) if m.weight is not None else w.b.init(np.ones(c, np.float32), "ones")
    bias = w.param(f"{label}.bias", m.bias) if m.bias is not None else w.b.init(np.zeros(c, np.float32), "zeros")
    mean = w.b.init(m.running_mean.detach().float().cpu().numpy(), f"{label}.running_mean")
    var = w.b.init(m.running_var.detach().float().cpu().numpy(), f"{label}.running_var")
    return w.b.op("BatchNormalization", [x, weight, bias, mean, var], label or "bn", epsilon=float(m.eps))


def _layernorm(w: GraphWriter, m: nn.Module, label: str, x: str) -> str:
    if w.opset < 17:
        raise ModelError(f"LayerNorm {label!r} needs opset >= 17 (LayerNormalization); export with --opset 17")
    shape = list(m.normalized_shape)
    weight = (w.param(f"{label}.weight", m.weight) if m.weight is not None
              else w.b.init(np.ones(shape, np.float32), "ones"))
    inputs = [x, weight]
    if getattr(m, "bias", None) is not None:
        inputs.append(w.param(f"{label}.bias", m.bias))
    return w.b.op("LayerNormalization", inputs, label or "ln", axis=-len(shape), epsilon=float(m.eps))


def _gelu(w: GraphWriter, x: str, approximate: str, base: str) -> str:
    if approximate != "none":
        raise ModelError(f"{base!r}: GELU(approximate={approximate!r}) cannot be exported; use approximate='none'")
    if w.opset >= 20:
        return w.b.op("Gelu", [x], base)
    erf = w.b.op("Erf", [w.b.op("Div", [x, w.b.scalar(math.sqrt(2.0))], base)], base)
    half = w.b.op("Mul", [x, w.b.scalar(0.5)], base)
    return w.b.op("Mul", [half, w.b.op("Add", [erf, w.b.scalar(1.0)], base)], base)


def convert_module(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    m = w.module(str(node.target))
    label = w.label(str(node.target))
    if len(args) != 1 or kwargs or not isinstance(args[0], str):
        raise ModelError(f"module {label!r} ({type(m).__name__}) is called with {len(args)} arguments; the exporter "
                         "writes modules called on one tensor")
    x = args[0]
    shape = w.shape(node.args[0])
    b = w.b
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _conv(w, node, m, label, x)
    if isinstance(m, nn.Linear):
        return _linear(w, node, m, label, x)
    if is_activation_quantizer(m):
        return w.activation(label, m, x, len(shape)) if getattr(m, "enabled", True) else x
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        return x
    simple = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.Hardswish: "HardSwish"}
    for kind, op in simple.items():
        if type(m) is kind:
            return b.op(op, [x], label or op)
    if isinstance(m, (nn.ReLU6, nn.Hardtanh)):
        return b.op("Clip", [x, b.scalar(m.min_val), b.scalar(m.max_val)], label or "clip")
    if isinstance(m, nn.LeakyReLU):
        return b.op("LeakyRelu", [x], label or "leaky_relu", alpha=float(m.negative_slope))
    if isinstance(m, nn.ELU):
        return b.op("Elu", [x], label or "elu", alpha=float(m.alpha))
    if isinstance(m, nn.SiLU):
        return b.op("Mul", [x, b.op("Sigmoid", [x], label or "silu")], label or "silu")
    if isinstance(m, nn.GELU):
        return _gelu(w, x, m.approximate, label or "gelu")
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return b.op(type(m).__name__, [x], label or "softmax", axis=int(m.dim if m.dim is not None else -1))
    if isinstance(m, nn.Flatten):
        return _flatten(w, x, shape, m.start_dim, m.end_dim, label or "flatten")
    n = len(shape) - 2
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return _pool(w, m, label, x, n, "MaxPool")
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return _pool(w, m, label, x, n, "AveragePool")
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return _adaptive(w, shape, m.output_size, label, x, "AveragePool")
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        if m.return_indices:
            raise ModelError(f"{label!r}: adaptive max pooling with return_indices cannot be exported")
        return _adaptive(w, shape, m.output_size, label, x, "MaxPool")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(w, m, label, x)
    if isinstance(m, nn.LayerNorm):
        return _layernorm(w, m, label, x)
    raise ModelError(f"module {label!r} ({type(m).__name__}) has no ONNX translation in learnq's exporter; "
                     "supported modules are listed in learnq/export/ops.py")


# -- functions and methods ---------------------------------------------------------------------------------------
def _flatten(w: GraphWriter, x: str, shape: tuple[int, ...], start: int = 0, end: int = -1,
             base: str = "flatten") -> str:
    rank = len(shape)
    start, end = start % rank, end % rank
    if start == 1 and end == rank - 1:
        return w.b.op("Flatten", [x], base, axis=1)
    target = [0] * start + [-1] + list(shape[end + 1:])
    if start == 0 and w.dynamic_batch:
        raise ModelError("flattening the batch dimension cannot be exported with a dynamic batch size")
    return w.b.op("Reshape", [x, w.b.ints(target)], base)


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
    return _flatten(w, args[0], w.shape(node.args[0]), start, end, node.name)


def _cat(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return w.b.op("Concat", [_tensor(w, t, node.name) for t in args[0]], node.name, axis=int(dim))


def _mean(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = int(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    rank = len(w.shape(node.args[0]))
    axes = list(range(rank)) if dim is None else [int(d) % rank for d in _tuple(dim, 1)]
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
        return w.b.op(op, [args[0], w.b.ints([int(d) for d in _tuple(dim, 1)], "axes")], node.name)

    return run


def _gelu_fn(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    return _gelu(w, args[0], kwargs.get("approximate", "none"), node.name)


def _adaptive_fn(w: GraphWriter, node: torch.fx.Node, args: tuple, kwargs: dict) -> str:
    size = args[1] if len(args) > 1 else kwargs["output_size"]
    return _adaptive(w, w.shape(node.args[0]), size, node.name, args[0], "AveragePool")


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
