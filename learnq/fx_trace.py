"""The one ``torch.fx`` trace of a whole model that the ONNX exporter (:mod:`learnq.export.graph`) and the integer
deployment target (:mod:`learnq.act.integer_graph`) share, so that their node names agree (the exporter writes the
integer target's Q/DQ by node name).

The model is wrapped in a root module whose one submodule is ``net`` (a model that is a single layer is then one
traced call, and every node's target starts with ``net.``); which modules stay single calls is the caller's ``leaf``
predicate, on top of torch.fx's own (the ``torch.nn`` modules).

:class:`LeafTracer` alone (the model traced as it is, no root) is also the tracer of BatchNorm folding
(:mod:`learnq.bn_fold`), cross-layer equalization (:mod:`learnq.ptq.equalize`), the calibration loss's float prefix
(:mod:`learnq.ptq.calib_loss`) and GPTQ's paused forward (:mod:`learnq.ptq.layer_inputs`), each with its own leaf rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn

from learnq.errors import ModelError

Leaf = Callable[[nn.Module], bool]


class LeafTracer(torch.fx.Tracer):
    """A tracer that keeps ``leaf(m)`` modules (and torch.fx's default leaves) as single ``call_module`` nodes."""

    def __init__(self, leaf: Leaf) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.leaf(m) or super().is_leaf_module(m, module_qualified_name)


class Root(nn.Module):
    """The model as one submodule ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x)


def trace_model(model: nn.Module, leaf: Leaf, needed_by: str) -> torch.fx.GraphModule:
    """The GraphModule of ``Root(model)``; ModelError naming ``needed_by`` (who needs the trace) when torch.fx fails."""
    root = Root(model)
    try:
        graph = LeafTracer(leaf).trace(root)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, NotImplementedError...)
        raise ModelError(f"{needed_by} needs a torch.fx trace of {type(model).__name__}, which fails "
                         f"({type(exc).__name__}: {exc}); give a model without data-dependent control flow") from exc
    return torch.fx.GraphModule(root, graph)


def module_label(target: str) -> str:
    """The model's own name of a traced module (the root wraps the model as ``net``; the model itself is "")."""
    return "" if target == "net" else target.removeprefix("net.")


__all__ = ["Leaf", "LeafTracer", "Root", "module_label", "trace_model"]
