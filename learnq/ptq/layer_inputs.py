"""Every selected layer's calibration inputs from ONE forward pass, in layer order, while the layers before it are
quantized one by one (GPTQ's sequential protocol: Frantar et al. 2023, §3 and Algorithm 1's outer loop "for each
layer", each layer quantized on the inputs the partially quantized model gives it).

The usual way to give layer ``k`` the inputs of the model whose layers ``1..k-1`` are already quantized is to run
the model again from its input for every layer, stopping at layer ``k``
(:func:`learnq.ptq.reconstruction.for_each_input`): ``K`` partial forwards, the first layers recomputed ``K`` times.
:class:`LayerInputs` instead runs a ``torch.fx`` trace of the model node by node over all calibration batches and
pauses where layer ``k`` is called: the values computed so far (the quantized prefix) are kept, layer ``k``'s input
of every batch is handed out, and after the caller has quantized layer ``k`` the run resumes from that node, which
then calls the layer with its new weights. Each node runs once per batch: one forward pass in all. A value is freed
after its last use, so what is held at a pause is the live frontier of the graph (for a chain: one activation per
calibration sample, as much as one layer's captured input).

The results equal the partial forwards' exactly (same operations on the same batches) provided the selected layers
are called in the order they are quantized (definition order), each exactly once, by a traceable forward:
:func:`LayerInputs.build` returns None otherwise and the caller keeps the partial forwards (slower, same values).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

from learnq.fx_trace import LeafTracer
from learnq.layers import WEIGHT_LAYER_TYPES


def _leaf(m: nn.Module) -> bool:
    """The trace keeps every weight layer (subclasses too) as one ``call_module`` node."""
    return isinstance(m, WEIGHT_LAYER_TYPES)


class LayerInputs:
    """Step through ``model``'s graph over the calibration batches, pausing at each of ``layers`` in turn."""

    def __init__(self, model: nn.Module, graph: torch.fx.Graph, layers: Sequence[str], batches: list[torch.Tensor]):
        self.model = model
        self.modules = dict(model.named_modules())
        self.nodes = list(graph.nodes)
        self.layers = list(layers)
        self.batches = batches
        self.envs: list[dict[torch.fx.Node, Any]] = [{} for _ in batches]
        self.pos = 0
        last: dict[torch.fx.Node, int] = {}
        for i, node in enumerate(self.nodes):
            for arg in node.all_input_nodes:
                last[arg] = i
        self.free_after: dict[int, list[torch.fx.Node]] = {}
        for node, i in last.items():
            self.free_after.setdefault(i, []).append(node)

    @classmethod
    def build(cls, model: nn.Module, layers: Sequence[str], inputs: torch.Tensor, *, batch_size: int = 256,
              device: str | torch.device = "cpu") -> LayerInputs | None:
        """A stepper over ``inputs`` (batches of ``batch_size``), or None when the model cannot be stepped
        through exactly (untraceable forward, more than one input, a layer called twice, never, or out of order)."""
        try:
            graph = LeafTracer(_leaf).trace(model)
        except Exception:  # any tracing failure: the caller runs partial forwards instead (same values)
            return None
        if sum(node.op == "placeholder" for node in graph.nodes) != 1:
            return None
        if any(node.op == "call_module" and str(node.target) in set(layers) and not node.args
               for node in graph.nodes):
            return None  # a layer called with keyword arguments only
        calls = [str(node.target) for node in graph.nodes if node.op == "call_module"]
        wanted = set(layers)
        order = [c for c in calls if c in wanted]
        if order != list(layers):
            return None
        batches = [inputs[i:i + batch_size].to(device) for i in range(0, inputs.shape[0], batch_size)]
        return cls(model, graph, layers, batches)

    def __iter__(self) -> Iterator[tuple[str, list[torch.Tensor]]]:
        """``(layer, its input per batch)`` for each layer in order; the caller quantizes the layer before asking
        for the next one."""
        for layer in self.layers:
            yield layer, self._run_until(layer)

    @torch.no_grad()
    def _run_until(self, layer: str) -> list[torch.Tensor]:
        while True:
            node = self.nodes[self.pos]
            if node.op == "call_module" and str(node.target) == layer:
                return [torch.fx.node.map_arg(node.args[0], lambda n, env=env: env[n]).detach()
                        for env in self.envs]
            for env, x in zip(self.envs, self.batches, strict=True):
                env[node] = self._execute(node, env, x)
                for dead in self.free_after.get(self.pos, ()):
                    env.pop(dead, None)
            self.pos += 1

    def _execute(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any], x: torch.Tensor) -> Any:
        if node.op == "placeholder":
            return x
        if node.op == "output":
            return None
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        obj: Any = self.model  # get_attr
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj


__all__ = ["LayerInputs"]
