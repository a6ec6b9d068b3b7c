"""The model-file field of the integer deployment target (:mod:`learnq.act.integer_graph`): which tensors of the
graph carry an edge quantizer. Their ranges are the file's ``integer_edges.<node>.lo`` / ``.hi`` tensors; load puts
the quantizers back on the freshly built (and BatchNorm-folded) network and switches its forward to the integer
simulation, so the loaded model computes what the saved one computed, bit for bit.

Entry (version 1): ``{"version": 1, "target": "onnxruntime", "edges": [node names]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from learnq.act.integer import EdgeQuantizer
from learnq.act.integer_graph import EDGES, TARGETS, IntegerEdges, enable, has_integer_target
from learnq.errors import ConfigError

KEY = "integer_target"
VERSION = 1


class IntegerTargetField:
    key = KEY
    version = VERSION
    what = "integer deployment target"

    def state(self, model: nn.Module) -> dict | None:
        if not has_integer_target(model):
            return None
        return {"version": VERSION, "target": "onnxruntime", "edges": list(getattr(model, EDGES).keys())}

    def restore(self, model: nn.Module, value: Any, tensors: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(value, dict) or value.get("version") != VERSION or value.get("target") not in TARGETS \
                or not isinstance(value.get("edges"), list) or not all(isinstance(e, str) for e in value["edges"]):
            raise ConfigError(f"its '{KEY}' metadata is malformed (version {VERSION}, a target of {TARGETS} and a "
                              "list of edge names)")
        edges = IntegerEdges()
        for name in value["edges"]:
            q = EdgeQuantizer()
            q.enabled, q._seen = True, True
            for part in ("lo", "hi"):
                t = tensors.get(f"{EDGES}.{name}.{part}")
                if t is not None:
                    setattr(q, part, torch.as_tensor(t, dtype=torch.float32).reshape(()).clone())
            edges[name] = q
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        model.add_module(EDGES, edges.to(device))
        enable(model)


FIELD = IntegerTargetField()

__all__ = ["FIELD", "KEY", "IntegerTargetField"]
