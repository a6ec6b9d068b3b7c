"""Fold eval-mode BatchNorm layers into the convolution or dense layer that feeds them.

Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: A whitepaper"
(arXiv:1806.08342), Sec. 3.2 "Batch Normalization"; Jacob et al. 2018 (arXiv:1712.05877), Sec. 3.2. In eval mode a
BatchNorm is the per-channel affine map ``y = gamma * (x - mu) / sqrt(var + eps) + beta`` with its running ``mu``
and ``var``; after ``x = W * a + b`` it is absorbed into the layer, channel ``c`` getting

    s_c  = gamma_c / sqrt(var_c + eps)
    W'_c = s_c * W_c                  (output channel / row c of the weight)
    b'_c = s_c * (b_c - mu_c) + beta_c   (b_c = 0 when the layer had no bias)

and the BatchNorm is replaced by ``nn.Identity``. Quantizing the folded weights is what an integer inference engine
runs, so fold before attaching quantizers (a parametrized weight is refused).

Pairs are found with ``torch.fx`` symbolic tracing: a BatchNorm whose input is the output of a ``Conv1d/2d/3d`` or
``Linear`` call used nowhere else, each module called once, the BatchNorm's dimension matching the layer's and
``num_features`` its output channels. When the model can't be traced (data-dependent control flow), consecutive
``(layer, BatchNorm)`` children of ``nn.Sequential`` containers are used instead, with a warning. ``Linear`` +
``BatchNorm1d`` assumes (N, features) inputs, the only case where the BatchNorm normalises the layer's outputs.
A BatchNorm without running statistics (``track_running_stats=False``) normalises with batch statistics and is left
alone, as is any BatchNorm whose input is not such a layer output.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from learnq.errors import ModelError
from learnq.fx_trace import LeafTracer

FOLDED_BN_ATTR = "learnq_folded_batchnorm"
"""The attribute of a model whose BatchNorm layers were folded: the folded (layer, BatchNorm) pairs (recorded in its
model file by :mod:`learnq.fields.folded_bn`)."""

_LAYER_BN: tuple[tuple[type[nn.Module], tuple[type[nn.Module], ...]], ...] = (
    (nn.Conv1d, (nn.BatchNorm1d, nn.SyncBatchNorm)),
    (nn.Conv2d, (nn.BatchNorm2d, nn.SyncBatchNorm)),
    (nn.Conv3d, (nn.BatchNorm3d, nn.SyncBatchNorm)),
    (nn.Linear, (nn.BatchNorm1d, nn.SyncBatchNorm)),
)
_LAYERS = tuple(layer for layer, _ in _LAYER_BN)


def foldable(layer: nn.Module | None, bn: nn.Module | None) -> bool:
    """``bn`` normalises the output channels of ``layer`` (a conv/linear layer) with running statistics."""
    if not isinstance(bn, _BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return False
    for layer_type, bn_types in _LAYER_BN:
        if isinstance(layer, layer_type):
            out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            return isinstance(bn, bn_types) and bn.num_features == out
    return False


def _leaf(m: nn.Module) -> bool:
    """The trace keeps layers and BatchNorms (subclasses too, parametrized or not) as single ``call_module`` nodes."""
    return isinstance(m, (*_LAYERS, _BatchNorm))


def _pairs_from_graph(model: nn.Module, graph: torch.fx.Graph) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue  # input is not a module output, or the layer's output is also used elsewhere
        if calls[src.target] != 1 or calls[node.target] != 1:
            continue  # a module called at several places: folding would change the other calls
        if foldable(modules[src.target], modules[node.target]):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
            if uses[id(a)] == 1 and uses[id(b)] == 1 and foldable(a, b):
                prefix = f"{seq_name}." if seq_name else ""
                pairs.append((prefix + name_a, prefix + name_b))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(layer, batchnorm)`` of every foldable pair in ``model``, in execution order.

    Uses ``torch.fx`` tracing; for a model that can't be traced, consecutive children of ``nn.Sequential``
    containers (with a ``UserWarning`` saying why tracing failed). A model without BatchNorm has no pair (and is
    not traced).
    """
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return []
    try:
        graph = LeafTracer(_leaf).trace(model)
    except Exception as exc:  # any tracing failure (TraceError, TypeError from Proxy, ...): fall back, loudly
        warnings.warn(
            f"fold_batchnorm: torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "only (layer, BatchNorm) pairs that are consecutive children of nn.Sequential are found",
            UserWarning,
            stacklevel=2,
        )
        return _pairs_from_sequentials(model)
    return _pairs_from_graph(model, graph)


@torch.no_grad()
def folded_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: _BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of the module docstring for a layer's ``weight``/``bias`` followed by eval-mode ``bn``.

    Computed in float64 and returned in ``weight``'s dtype; ``bias=None`` means a zero bias.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError(
            f"folded_weights: {type(bn).__name__} has no running statistics (track_running_stats=False) and "
            "cannot be folded"
        )
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # (C_out,)
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))  # scale row / output channel c
    return w.to(weight.dtype), (scale * (b - mean) + beta).to(weight.dtype)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module, inplace: bool = False,
                   pairs: list[tuple[str, str]] | None = None) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv/linear layer directly before it; returns the folded model.

    The BatchNorm becomes ``nn.Identity`` and the layer gets a bias if it had none; with ``inplace=False`` (default)
    ``model`` is deep-copied first and left untouched. Raises ModelError, before changing anything, when a BatchNorm
    of a pair is in training mode (call ``model.eval()`` first) or a layer's weight/bias is parametrized (fold before
    attaching quantizers). ``pairs``: the (layer, BatchNorm) pairs, when the caller already has them from
    :func:`find_conv_bn_pairs` on this model (saves a second trace).
    """
    target = model if inplace else copy.deepcopy(model)
    pairs = find_conv_bn_pairs(target) if pairs is None else pairs
    training = [bn for _, bn in pairs if target.get_submodule(bn).training]
    if training:
        raise ModelError(
            f"fold_batchnorm: BatchNorm layers {training} are in training mode, where they use batch statistics; "
            "call model.eval() before folding"
        )
    param = [layer for layer, _ in pairs if parametrize.is_parametrized(target.get_submodule(layer))]
    if param:
        raise ModelError(
            f"fold_batchnorm: layers {param} have parametrized weights (quantizers attached); fold BatchNorm first, "
            "then attach quantizers"
        )
    for layer_name, bn_name in pairs:
        layer = target.get_submodule(layer_name)
        bn = target.get_submodule(bn_name)
        weight, bias = folded_weights(layer.weight, layer.bias, bn)  # type: ignore[arg-type]
        with torch.no_grad():
            layer.weight.copy_(weight)
            if layer.bias is None:
                layer.bias = nn.Parameter(bias)
            else:
                layer.bias.copy_(bias)
        _set_submodule(target, bn_name, nn.Identity())
    return target


@torch.no_grad()
def bn_statistics(model: nn.Module, pairs: list[tuple[str, str]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (β, |γ|)}`` for each (layer, BatchNorm) pair: the per-channel mean and standard deviation of the
    BatchNorm's output, which the folded layer's pre-activation has (read before folding; used by data-free methods,
    Nagel et al. 2019 §4.1.1 and §4.2). A BatchNorm without affine parameters gives (0, 1)."""
    out = {}
    for layer_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        n = bn.num_features
        beta = bn.bias.detach().float().clone() if bn.bias is not None else torch.zeros(n)
        gamma = bn.weight.detach().float().abs().clone() if bn.weight is not None else torch.ones(n)
        out[layer_name] = (beta, gamma)
    return out


__all__ = ["FOLDED_BN_ATTR", "bn_statistics", "find_conv_bn_pairs", "fold_batchnorm", "foldable", "folded_weights"]
