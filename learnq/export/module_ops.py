"""The torch modules learnq's ONNX writer knows, each written as ONNX operators (opset >= 13; the functions and
tensor methods are :mod:`learnq.export.ops`).

Conv1d/2d/3d and Linear (with learnq's quantized weights and input quantizers), learnq's activation quantizers,
ReLU, ReLU6, Hardtanh, LeakyReLU, Sigmoid, Tanh, SiLU, GELU, Hardswish, ELU, Softmax, LogSoftmax, Identity, Dropout,
Flatten, MaxPool, AvgPool, AdaptiveAvgPool (exact windows; non-divisible sizes as the averaging matrices PyTorch's
windows define), AdaptiveMaxPool (output 1 or divisible), BatchNorm (eval, running statistics), LayerNorm
(opset >= 17). Anything else raises ModelError naming the module.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
from torch import nn

from learnq.errors import ModelError
from learnq.export.qdq import is_activation_quantizer

if TYPE_CHECKING:  # annotations only: the graph writer calls this module
    from learnq.export.graph import GraphWriter


def as_tuple(v: Any, n: int) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v)] * n


def _pads(padding: Any, n: int) -> list[int]:
    p = as_tuple(padding, n)
    return p + p


def _conv(w: GraphWriter, node: torch.fx.Node, m: nn.Module, label: str, x: str) -> str:
    n = m.weight.ndim - 2
    if m.padding_mode != "zeros":
        raise ModelError(f"layer {label!r} uses padding_mode={m.padding_mode!r}; the exporter writes 'zeros' only")
    k, dil = list(m.kernel_size), as_tuple(m.dilation, n)
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
    return w.b.op("Conv", inputs, label or "conv", kernel_shape=k, strides=as_tuple(m.stride, n), pads=pads,
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
    k = as_tuple(m.kernel_size, n)
    stride = as_tuple(m.stride if m.stride not in (None, []) else m.kernel_size, n)
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": stride, "pads": _pads(m.padding, n),
                             "ceil_mode": int(m.ceil_mode)}
    if kind == "MaxPool":
        if m.return_indices:
            raise ModelError(f"{label!r}: max pooling with return_indices cannot be exported")
        attrs["dilations"] = as_tuple(m.dilation, n)
    else:
        if m.divisor_override is not None:
            raise ModelError(f"{label!r}: average pooling with divisor_override cannot be exported")
        attrs["count_include_pad"] = int(m.count_include_pad)
    return w.b.op(kind, [x], label or kind, **attrs)


def adaptive_pool(w: GraphWriter, shape: tuple[int, ...], size: Any, label: str, x: str, kind: str) -> str:
    spatial = list(shape[2:])
    out = [s if o is None else int(o) for s, o in zip(spatial, as_tuple(size, len(spatial)), strict=True)]
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


def gelu(w: GraphWriter, x: str, approximate: str, base: str) -> str:
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
        return gelu(w, x, m.approximate, label or "gelu")
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return b.op(type(m).__name__, [x], label or "softmax", axis=int(m.dim if m.dim is not None else -1))
    if isinstance(m, nn.Flatten):
        return flatten(w, x, shape, m.start_dim, m.end_dim, label or "flatten")
    n = len(shape) - 2
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return _pool(w, m, label, x, n, "MaxPool")
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return _pool(w, m, label, x, n, "AveragePool")
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return adaptive_pool(w, shape, m.output_size, label, x, "AveragePool")
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        if m.return_indices:
            raise ModelError(f"{label!r}: adaptive max pooling with return_indices cannot be exported")
        return adaptive_pool(w, shape, m.output_size, label, x, "MaxPool")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(w, m, label, x)
    if isinstance(m, nn.LayerNorm):
        return _layernorm(w, m, label, x)
    raise ModelError(f"module {label!r} ({type(m).__name__}) has no ONNX translation in learnq's exporter; "
                     "supported modules are listed in learnq/export/module_ops.py")


def flatten(w: GraphWriter, x: str, shape: tuple[int, ...], start: int = 0, end: int = -1,
             base: str = "flatten") -> str:
    rank = len(shape)
    start, end = start % rank, end % rank
    if start == 1 and end == rank - 1:
        return w.b.op("Flatten", [x], base, axis=1)
    target = [0] * start + [-1] + list(shape[end + 1:])
    if start == 0 and w.dynamic_batch:
        raise ModelError("flattening the batch dimension cannot be exported with a dynamic batch size")
    return w.b.op("Reshape", [x, w.b.ints(target)], base)


__all__ = ["as_tuple", "adaptive_pool", "convert_module", "flatten", "gelu"]
