"""The calibration loss as a function of the clipping values α of a quantized model, made cheap to evaluate.

LAPQ (seeds/001, Algorithm 1 and §4.3; METHODS.md §2 step 3): Powell's method minimises the mean cross-entropy
``L(α)`` of the quantized network over the calibration set, with respect to the vector of all weight and activation
clipping values. Each evaluation runs the network, so this module removes every cost that does not depend on α:

* the *float prefix* runs once: the model is traced with ``torch.fx``; every node that does not depend (directly or
  through its inputs) on a quantized layer is constant, and the constant values consumed by the rest of the graph
  (e.g. the input of the first quantized layer, or of a residual branch) are computed once per batch and cached on
  the device. An evaluation runs only the remaining graph on the cached values. A model that cannot be traced is
  evaluated whole, with a warning (``CalibrationLoss.cached`` is False);
* weights are fake-quantized only when their own α changed (:class:`learnq.ptq.ptq_weight.PTQWeight` caches its
  quantized weight, and :meth:`CalibrationLoss.set_alphas` touches only the quantizers whose α changed);
* the outputs of layers that did not change are reused (issue 12): the values of every node of the variable part
  from the previous evaluation are kept (per batch), and an evaluation recomputes only the nodes downstream of a
  module whose state changed (a parameter or buffer written, replaced or moved, an activation quantizer's attribute
  set). Powell's line searches move one coordinate at a time, so most evaluations run only the layers from the
  changed one on. The same modules run on the same inputs, so the loss is the one a full pass gives, bit for bit
  (``tests/test_calib_loss.py``). The kept values are bounded by ``reuse_mb`` (beyond it: no reuse);
* evaluation runs in eval mode under ``torch.no_grad()`` (not ``torch.inference_mode()``: the weights quantized
  during an evaluation stay cached in their parametrization, and an inference tensor there would break a later
  training forward), and every evaluation is counted (``evals``).

The coordinates are, in model order, each quantized layer's input quantizer (``"<layer>.input"``,
:class:`learnq.act.ActQuantizer`) and weight quantizer (``"<layer>.weight"``): one α per tensor, or one per
channel for per-channel quantizers (labels ``"<name>[c]"``). Steps Δ are α times a fixed factor of the grid
(``Δ = 2α/(2^b-1)`` on the LAPQ grid, ``α/(2^b-1)`` unsigned, ``α/(2^(b-1)-1)`` symmetric).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn

from learnq.act import ActQuantizer, input_quantizers
from learnq.batches import calibration_batches
from learnq.clipping import scale_offset
from learnq.errors import ConfigError, DataError, ModelError
from learnq.evaluation import task_loss
from learnq.fx_trace import Leaf, LeafTracer
from learnq.grid import GridSpec
from learnq.layers import WEIGHT_LAYER_TYPES, parameter_names
from learnq.ptq.ptq_weight import PTQWeight, ptq_weight_of


@dataclass
class StepCoordinate:
    """One quantizer whose α is a coordinate of the loss: its name, the quantizer, ``"weight"`` or
    ``"activation"``, the layer name, the number of α values and the layer."""

    name: str
    quantizer: PTQWeight | ActQuantizer
    kind: str
    layer: str
    size: int
    module: nn.Module

    def spec(self) -> GridSpec:
        """The grid α applies to."""
        return self.quantizer.spec if isinstance(self.quantizer, PTQWeight) else self.quantizer.grid_spec()

    def values(self) -> torch.Tensor:
        """What the quantizer quantizes, for a layer-wise clipping rule: the float weight (after any
        parametrization before the quantizer), or the activation quantizer's observed sample (rows = groups)."""
        if isinstance(self.quantizer, ActQuantizer):
            if self.quantizer.sample is None:
                raise DataError(f"the input quantizer of layer {self.layer!r} observed no data; calibrate it first")
            return self.quantizer.sample
        plist = self.module.parametrizations[self.name.rpartition(".")[2]]  # type: ignore[index]
        with torch.no_grad():
            w = plist.original
            for p in list(plist)[:-1]:
                w = p(w)
        return w.detach()

    def get(self) -> torch.Tensor:
        """A copy of the current α (flat, float32, CPU)."""
        return self.quantizer.alpha.detach().float().reshape(-1).cpu().clone()

    def set(self, alpha: torch.Tensor) -> None:
        if isinstance(self.quantizer, ActQuantizer) and not self.quantizer.per_channel:
            self.quantizer.set_alpha(alpha.reshape(()))
        else:
            self.quantizer.set_alpha(alpha.reshape(-1))

    def step_factor(self) -> torch.Tensor:
        """Δ / α for each of this coordinate's α values."""
        return scale_offset(torch.ones(self.size), self.spec())[0].float()


def step_coordinates(model: nn.Module) -> list[StepCoordinate]:
    """Every enabled input quantizer and PTQ weight quantizer of ``model``, in model order (input before weight)."""
    acts = input_quantizers(model)
    coords: list[StepCoordinate] = []
    for layer_name, module in model.named_modules():
        act = acts.get(layer_name)
        if act is not None and act.enabled:
            coords.append(StepCoordinate(f"{layer_name}.input", act, "activation", layer_name,
                                         int(act.alpha.numel()), module))
        for attr in parameter_names(module)[0]:  # "weight"; an attention's "in_proj_weight"
            weight = ptq_weight_of(module, attr) if hasattr(module, attr) else None
            if weight is not None:
                coords.append(StepCoordinate(f"{layer_name}.{attr}", weight, "weight", layer_name,
                                             int(weight.alpha.numel()), module))
    return coords


def _leaf_rule(model: nn.Module, variable: set[str]) -> Leaf:
    """The trace keeps every module named in ``variable`` (those that hold a quantizer) and every weight layer as one
    ``call_module`` node. By identity: torch.fx names a module by its first name in ``named_modules()``, the name a
    coordinate's layer has."""
    stop = {id(m) for name, m in model.named_modules() if name in variable}
    return lambda m: id(m) in stop or isinstance(m, WEIGHT_LAYER_TYPES)


def split_float_prefix(model: nn.Module, variable: set[str]) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """``(prefix, suffix)`` GraphModules of ``model``: ``prefix(x)`` returns the tuple of constant values that the
    variable part consumes; ``suffix(*those)`` returns the model's output. ``variable`` names the modules whose
    calls depend on α. Raises whatever ``torch.fx`` raises for a model it cannot trace."""
    graph = LeafTracer(_leaf_rule(model, variable)).trace(model)
    depends: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in variable:
            depends.add(node)
        elif node.op == "get_attr" and any(str(node.target).startswith(f"{v}.") for v in variable):
            depends.add(node)
        elif any(arg in depends for arg in node.all_input_nodes):
            depends.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    frontier: list[torch.fx.Node] = []
    for node in graph.nodes:
        if node in depends or node.op == "output":
            continue
        if any(user in depends or user is output for user in node.users) and node not in frontier:
            frontier.append(node)
    # prefix: the constant part, returning the frontier values
    prefix = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.nodes:
        if node in depends or node.op == "output":
            continue
        env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(tuple(env[n] for n in frontier))
    # suffix: placeholders for the frontier, then the variable part
    suffix = torch.fx.Graph()
    senv: dict[torch.fx.Node, torch.fx.Node] = {}
    for i, node in enumerate(frontier):
        senv[node] = suffix.placeholder(f"cached_{i}")
    for node in graph.nodes:
        if node in depends or node.op == "output":
            if node.op == "output":
                suffix.output(torch.fx.graph.map_arg(node.args[0], lambda n: senv[n]))
            else:
                senv[node] = suffix.node_copy(node, lambda n: senv[n])
    return torch.fx.GraphModule(model, prefix), torch.fx.GraphModule(model, suffix)


class CalibrationLoss:
    """``L(α)``: mean cross-entropy of ``model`` (with its quantizers) on labelled ``calib_data``.

    ``names``: the coordinates to expose (default all of :func:`step_coordinates`, in model order); the others keep
    their α. ``cache``: trace the model and run its float prefix once (see the module docstring).
    """

    def __init__(self, model: nn.Module, calib_data: object, *, names: Sequence[str] | None = None,
                 batch_size: int = 256, device: str | torch.device = "cpu", cache: bool = True,
                 reuse_mb: float = 1024.0) -> None:
        self.model = model
        self.device = torch.device(device)
        all_coords = step_coordinates(model)
        if not all_coords:
            raise ModelError("the model has no enabled PTQ weight or input quantizer; attach and calibrate "
                             "quantizers first (e.g. learnq.ptq.quantize(model, calib, method='mse').model)")
        if names is None:
            self.coordinates = all_coords
        else:
            by_name = {c.name: c for c in all_coords}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ConfigError(f"unknown quantizer name(s) {missing}; the model has {list(by_name)}")
            self.coordinates = [by_name[n] for n in names]
        self.sizes = [c.size for c in self.coordinates]
        self.names = [c.name if c.size == 1 else f"{c.name}[{i}]" for c in self.coordinates for i in range(c.size)]
        self.evals = 0
        self.bar = None  # a tqdm bar to advance per evaluation, if set
        model.eval()
        model.to(self.device)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        for x, y in calibration_batches(calib_data, batch_size):
            if y is None:
                raise DataError("the calibration loss needs labelled calibration data (inputs and class labels)")
            self.batches.append((x.to(self.device), y.to(self.device).long()))
        self.count = sum(int(y.shape[0]) for _, y in self.batches)
        self.cached = False
        self._suffix: torch.fx.GraphModule | None = None
        self._values: list[tuple] = []
        self._reuse: _Reuse | None = None
        self.reuse_mb = float(reuse_mb)
        self.recomputed = 0  # nodes of the variable part computed (reuse skips the others)
        if cache:
            self._build_cache({c.layer for c in all_coords})

    # -- cache ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _build_cache(self, variable: set[str]) -> None:
        try:
            prefix, suffix = split_float_prefix(self.model, variable)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: evaluate the whole model instead, loudly
            warnings.warn(f"calibration loss: torch.fx could not trace {type(self.model).__name__} "
                          f"({type(exc).__name__}: {exc}); every evaluation runs the whole model", UserWarning,
                          stacklevel=3)
            return
        self._values = [prefix(x) for x, _ in self.batches]
        self._suffix = suffix
        self.cached = True
        if self.reuse_mb > 0:
            self._reuse = _Reuse(suffix)

    # -- α and steps ----------------------------------------------------------------------------------------------
    def get_alphas(self) -> np.ndarray:
        return torch.cat([c.get() for c in self.coordinates]).double().numpy()

    def set_alphas(self, alphas: np.ndarray | Sequence[float]) -> None:
        """Set every coordinate's α from the flat vector ``alphas``; quantizers whose α is unchanged are untouched
        (their cached quantized weight stays valid)."""
        vec = torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=torch.float32).reshape(-1)
        if vec.numel() != sum(self.sizes):
            raise ConfigError(f"α vector has {vec.numel()} values, the loss has {sum(self.sizes)} coordinates")
        for c, part in zip(self.coordinates, vec.split(self.sizes), strict=True):
            if not torch.equal(part, c.get()):
                c.set(part)

    def step_factors(self) -> np.ndarray:
        return torch.cat([c.step_factor() for c in self.coordinates]).double().numpy()

    def get_steps(self) -> np.ndarray:
        return self.get_alphas() * self.step_factors()

    def set_steps(self, steps: np.ndarray | Sequence[float]) -> None:
        self.set_alphas(np.asarray(steps, dtype=np.float64) / self.step_factors())

    # -- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, *, use_cache: bool = True) -> float:
        """Mean cross-entropy with the current α (counted as one evaluation)."""
        self.model.eval()
        total = 0.0
        reuse = self._reuse if use_cache and self.cached else None
        dirty = reuse.start() if reuse is not None else None
        for i, (x, y) in enumerate(self.batches):
            if reuse is not None:
                out = reuse.run(i, self._values[i], dirty)  # type: ignore[arg-type]
            elif use_cache and self.cached:
                out = self._suffix(*self._values[i])  # type: ignore[misc]
            else:
                out = self.model(x)
            loss, _ = task_loss(out.float(), y)  # mean per sample: (N, C) logits, or (N, T, C) over the positions
            total += float(loss) * y.shape[0]
        if reuse is not None:
            self.recomputed += len(dirty) * len(self.batches)  # type: ignore[arg-type]
            if reuse.nbytes() > self.reuse_mb * 2**20:
                self._reuse = None  # too large to keep: plain cached evaluations from now on
        self.evals += 1
        if self.bar is not None:
            self.bar.update(1)
        return total / self.count

    def full_loss(self) -> float:
        """The loss from a full forward pass of the model (no cache); counted."""
        return self.evaluate(use_cache=False)

    def __call__(self, alphas: np.ndarray | Sequence[float]) -> float:
        self.set_alphas(alphas)
        return self.evaluate()

    def loss_at_steps(self, steps: np.ndarray | Sequence[float]) -> float:
        self.set_steps(steps)
        return self.evaluate()


def _module_key(module: nn.Module) -> tuple:
    """The state of ``module`` an output depends on: every parameter and buffer (object, in-place version, storage)
    and the attribute-assignment count of its activation quantizers."""
    key: list = []
    for m in module.modules():
        key.append(m.__dict__.get("_generation", 0))
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                key += (t, t._version, t.data_ptr())
    return tuple(key)


class _Reuse:
    """Runs the variable part of the graph node by node, keeping every node's value per batch and recomputing only
    the nodes downstream of a module whose state (:func:`_module_key`) changed since the previous evaluation."""

    def __init__(self, suffix: torch.fx.GraphModule) -> None:
        self.gm = suffix
        self.nodes = [n for n in suffix.graph.nodes if n.op not in ("placeholder", "output")]
        self.inputs = [n for n in suffix.graph.nodes if n.op == "placeholder"]
        self.output = next(n for n in suffix.graph.nodes if n.op == "output")
        self.modules = dict(suffix.named_modules())
        self.keys: dict[torch.fx.Node, tuple] = {}
        self.env: dict[int, dict[torch.fx.Node, object]] = {}

    def _key(self, node: torch.fx.Node) -> tuple:
        if node.op == "call_module":
            return _module_key(self.modules[str(node.target)])
        if node.op == "get_attr":
            t = self._attr(node)
            return (t, t._version, t.data_ptr()) if isinstance(t, torch.Tensor) else (t,)
        return ()

    def _attr(self, node: torch.fx.Node) -> object:
        value: object = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value

    def start(self) -> set[torch.fx.Node]:
        """The nodes to compute in this evaluation (all of them the first time)."""
        dirty: set[torch.fx.Node] = set()
        for node in self.nodes:
            key = self._key(node)
            if not self.env or self.keys.get(node) != key or any(a in dirty for a in node.all_input_nodes):
                dirty.add(node)
            self.keys[node] = key
        return dirty

    def run(self, batch: int, inputs: tuple, dirty: set[torch.fx.Node]) -> torch.Tensor:
        env = self.env.setdefault(batch, {})
        for node, value in zip(self.inputs, inputs, strict=True):
            env[node] = value
        load = lambda n: env[n]  # noqa: E731
        for node in self.nodes:
            if node not in dirty:
                continue
            args = torch.fx.graph.map_arg(node.args, load)
            kwargs = torch.fx.graph.map_arg(node.kwargs, load)
            if node.op == "call_module":
                env[node] = self.modules[str(node.target)](*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)  # type: ignore[operator]
            elif node.op == "call_method":
                env[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            else:
                env[node] = self._attr(node)
        return torch.fx.graph.map_arg(self.output.args[0], load)  # type: ignore[return-value]

    def nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for env in self.env.values():
            for value in env.values():
                if isinstance(value, torch.Tensor) and id(value) not in seen:
                    seen.add(id(value))
                    total += value.numel() * value.element_size()
        return total


__all__ = ["CalibrationLoss", "StepCoordinate", "split_float_prefix", "step_coordinates"]
