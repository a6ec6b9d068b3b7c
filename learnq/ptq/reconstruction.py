"""The shape every layer-by-layer reconstruction PTQ method shares: AdaRound (Nagel et al. 2020, §4), AdaQuant
(Hubara et al. 2021, §3) and GPTQ (Frantar et al. 2023, Algorithm 1's outer loop "for each layer"); METHODS.md §6-7.

Each of them quantizes the selected weights one layer at a time, in definition order, on the inputs that layer
receives from the model whose earlier layers are already quantized (``inputs="quantized"``, the paper's asymmetric
reconstruction) or from the float model (``inputs="float"``), against the float layer's output. What differs is only
the layer's optimisation; the rest is here:

* :class:`LayerByLayer`: the run over the model. Checks the options, puts the model in eval mode, selects the
  weights (a tied one once), keeps a float copy when the method needs the float model, seeds torch, and hands out
  the selected weights in order (a tqdm bar), one at a time or, for a block-wise method (QDrop, PD-Quant), grouped
  into blocks (:meth:`LayerByLayer.blocks`: every selected weight in exactly one block, checked before anything
  changes); :meth:`LayerByLayer.layer_data` captures a layer's inputs and float target (:meth:`~LayerByLayer.
  float_target` the target alone), :meth:`LayerByLayer.attach` folds in bias correction when asked, freezes the
  layer into a :class:`learnq.quantized.QuantizedWeight` and records the layer's info (:meth:`~LayerByLayer.
  attach_block`: a block's layers, one info for the block). Data-free and per-weight methods (SQuant, k-means) use
  it too, without the float copy;
* :func:`run_reconstruction`: the PTQ method around it. Quantizes the weights (when they are quantized at all),
  records them in the context, then attaches input quantizers observed on the quantized model, α by option
  ``act_clip``; with ``stream=True`` those quantizers observe the inputs the run captures instead (the method hands
  its ``observers`` each batch), so no calibration pass is needed;
* the capture of a layer's input: one forward per batch, stopped at the layer by a hook (:func:`capture_inputs`,
  :func:`for_each_input`, :func:`run_until_stop`).

A new reconstruction method is one module: a per-layer (or per-block) function, a ``weights(ctx, observers)`` that
loops over a :class:`LayerByLayer` (or its :meth:`~LayerByLayer.blocks`), and ``METHOD = PTQMethod(name, ...,
lambda ctx: run_reconstruction(ctx, name, weights))``; plus its line in :mod:`learnq.ptq.registry`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from learnq.attach import Selection, select_weights
from learnq.errors import ConfigError, DataError, ModelError
from learnq.grid import QuantizedTensor
from learnq.ptq.bias_correction import correct_quantized
from learnq.ptq.context import PTQContext
from learnq.quantized import attach_quantized, get_module, split_name

INPUT_MODES = ("quantized", "float")
Observers = Mapping[str, Callable[[torch.Tensor], None]]
LayerFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Stop(Exception):
    """Raised by the capture hook once the layer's input is recorded: the rest of the forward is not needed."""


@torch.no_grad()
def run_until_stop(model: nn.Module, inputs: torch.Tensor, handles: list, *, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> None:
    """Run ``model`` on ``inputs`` batch by batch, each forward ended early where one of the hooks behind ``handles``
    raises :class:`_Stop`; the hooks are removed afterwards, also on an error."""
    try:
        for i in range(0, inputs.shape[0], batch_size):
            try:
                model(inputs[i:i + batch_size].to(device))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()


def for_each_input(model: nn.Module, module: nn.Module, inputs: torch.Tensor, fn: Callable[[torch.Tensor], None], *,
                   batch_size: int = 256, device: str | torch.device = "cpu") -> int:
    """Run ``model`` on ``inputs`` batch by batch, each forward stopped where ``module`` is called, and hand
    ``module``'s input of every batch to ``fn`` (in order); returns the number of batches."""
    batches = 0

    def hook(_m: nn.Module, args: tuple) -> None:
        nonlocal batches
        fn(args[0].detach())
        batches += 1
        raise _Stop

    run_until_stop(model, inputs, [module.register_forward_pre_hook(hook)], batch_size=batch_size, device=device)
    if batches != math.ceil(inputs.shape[0] / batch_size):
        raise ModelError(f"{type(module).__name__} layer is not called by the model's forward; its input cannot be "
                         "captured (is it part of the model?)")
    return batches


def capture_inputs(model: nn.Module, module: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """The input ``module`` receives when ``model`` runs on ``inputs`` (all samples, concatenated, on ``device``)."""
    seen: list[torch.Tensor] = []
    for_each_input(model, module, inputs, seen.append, batch_size=batch_size, device=device)
    return torch.cat(seen)


@dataclass
class Layer:
    """One selected weight, handed out by :class:`LayerByLayer` in processing order: its position (a per-layer seed
    is ``seed + index``), qualified name, holder module name and module (in the model being quantized), parameter
    name and the float weight (detached)."""

    index: int
    name: str
    module_name: str
    param: str
    module: nn.Module
    weight: torch.Tensor


@dataclass
class Block:
    """A group of modules reconstructed together, handed out by :meth:`LayerByLayer.blocks`: its position among the
    groups given (a per-block seed is ``seed + index``; a group without a selected weight is skipped but counted),
    the module names it runs and the selected weights inside it (in selection order)."""

    index: int
    modules: list[str]
    layers: list[Layer]


@dataclass
class LayerByLayer:
    """A layer-by-layer run of method ``title`` (errors name it, the bar shows it in lower case) over the selected
    weights of ``model`` (quantized in place).

    ``params``: the parameter names the method can quantize (a selected bias or other is refused before anything
    changes; None: any parameter). ``float_reference``: the method needs the float model (float targets) whatever
    ``inputs`` says; without it a float copy is kept only for ``inputs="float"``. ``seed``: ``torch.manual_seed(seed)``
    at the start (None: not seeded). Iterate to get each :class:`Layer` (or :meth:`blocks` to get each
    :class:`Block`); :meth:`attach` each result; :attr:`infos` collects the infos, :attr:`attached` the weights
    frozen so far, in order.
    """

    model: nn.Module
    calib_inputs: torch.Tensor
    title: str
    selection: Selection = field(default_factory=Selection)
    inputs: str = "quantized"
    params: tuple[str, ...] | None = ("weight",)
    float_reference: bool = True
    bias_correction: bool = False
    variance_correction: bool = False
    device: str | torch.device = "cpu"
    seed: int | None = None
    progress: bool = False
    names: list[str] = field(init=False)
    float_model: nn.Module | None = field(init=False)
    infos: dict[str, Any] = field(init=False, default_factory=dict)
    attached: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_MODES:
            raise ConfigError(f"{self.title} inputs={self.inputs!r} is unknown; use 'quantized' or 'float'")
        if not isinstance(self.calib_inputs, torch.Tensor) or self.calib_inputs.shape[0] == 0:
            raise DataError(f"{self.title} needs a non-empty tensor of calibration inputs")
        self.model.eval()
        self.names = select_weights(self.model, self.selection)[0]  # a tied weight once, for its first layer
        refused = [n for n in self.names if self.params is not None and split_name(n)[1] not in self.params]
        if refused:
            raise ConfigError(f"{self.title} quantizes layer weights only, not {', '.join(map(repr, refused))}; "
                              "select weights (biases=False)")
        needs_float = self.float_reference or self.inputs == "float"
        self.float_model = copy.deepcopy(self.model) if needs_float else None  # the model is quantized layer by layer
        if self.seed is not None:
            torch.manual_seed(self.seed)

    @property
    def source(self) -> nn.Module:
        """The model each layer's inputs come from: the float copy for ``inputs="float"``, else the model itself."""
        return self.float_model if self.inputs == "float" and self.float_model is not None else self.model

    def _layer(self, index: int, name: str) -> Layer:
        module_name, param = split_name(name)
        module = get_module(self.model, module_name)
        return Layer(index, name, module_name, param, module, getattr(module, param).detach())

    def __iter__(self) -> Iterator[Layer]:
        bar = tqdm(self.names, desc=self.title.lower(), unit="layer", disable=not self.progress)
        for i, name in enumerate(bar):
            yield self._layer(i, name)

    def blocks(self, groups: Sequence[Sequence[str]], *, hint: str = "") -> Iterator[Block]:
        """The selected weights grouped into ``groups`` (each a list of module names run one after the other): a
        weight belongs to the first group holding its module or a module above it. A group without a selected weight
        is skipped; a selected weight in no group is a ModelError (``hint`` says how to fix it) before any block is
        handed out."""
        owner: dict[str, int] = {}
        for name in self.names:
            for g, modules in enumerate(groups):
                if any(name.startswith(f"{m}.") for m in modules):
                    owner[name] = g
                    break
        missing = [n for n in self.names if n not in owner]
        if missing:
            raise ModelError(f"{self.title} found no block holding {missing}: {hint + ', or ' if hint else ''}leave "
                             "them out with the selection")
        bar = tqdm(groups, desc=self.title.lower(), unit="block", disable=not self.progress)
        for g, modules in enumerate(bar):
            layers = [self._layer(i, n) for i, n in enumerate(self.names) if owner[n] == g]
            if layers:
                yield Block(g, list(modules), layers)

    def _float_inputs(self, layer_name: str) -> torch.Tensor:
        if self.float_model is None:
            raise ModelError(f"{self.title}: the float targets need the float model; build the run with "
                             "float_reference=True")
        return capture_inputs(self.float_model, get_module(self.float_model, layer_name), self.calib_inputs,
                              device=self.device)

    @staticmethod
    def _target(fn: LayerFn, x_float: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([fn(x_float[j:j + 256], weight) for j in range(0, x_float.shape[0], 256)])

    def float_target(self, layer_name: str, fn: LayerFn, weight: torch.Tensor) -> torch.Tensor:
        """``fn(x_float, weight)``: the float output of layer ``layer_name`` on the float model's inputs."""
        return self._target(fn, self._float_inputs(layer_name), weight)

    def layer_data(self, layer_name: str, fn: LayerFn, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` of the layer ``layer_name`` whose output ``fn(x, w)`` is reconstructed: its inputs
        (quantized or float model, by ``inputs``) and ``fn(x_float, weight)`` on the float model's inputs."""
        x_float = self._float_inputs(layer_name)
        x_q = x_float if self.inputs == "float" else capture_inputs(self.model, get_module(self.model, layer_name),
                                                                     self.calib_inputs, device=self.device)
        return x_q, self._target(fn, x_float, weight)

    def attach(self, layer: Layer, qt: QuantizedTensor, info: Any = None) -> None:
        """Freeze ``layer`` into ``qt`` (bias / variance correction folded in first when the run asks for it) and
        record its ``info`` (unless None)."""
        if self.bias_correction or self.variance_correction:
            qt = correct_quantized(qt, layer.weight, variance=self.variance_correction)
        attach_quantized(self.model, layer.name, qt)
        self.attached.append(layer.name)
        if info is not None:
            self.infos[layer.name] = info

    def attach_block(self, block: Block, qts: Mapping[str, QuantizedTensor], info: Any) -> None:
        """Freeze every layer of ``block`` into its ``qts[name]`` (as :meth:`attach`) and record the block's
        ``info`` under its first weight's name."""
        for layer in block.layers:
            self.attach(layer, qts[layer.name])
        self.infos[block.layers[0].name] = info


WeightsFn = Callable[[PTQContext, "Observers | None"], "dict[str, Any]"]


def report(info: Any) -> dict[str, Any]:
    """A layer's (or block's) info as a report row: a dataclass as a dict, a mapping as it is."""
    return asdict(info) if is_dataclass(info) else dict(info)


def run_reconstruction(ctx: PTQContext, key: str, weights: WeightsFn, *, stream: bool = False) -> dict[str, Any]:
    """The PTQ method around a reconstruction: ``weights(ctx, observers)`` quantizes the selected weights (skipped
    when weights stay in float) and returns ``{name: info}`` (dataclasses or dicts); they are recorded in ``ctx``,
    then input quantizers are attached with α by option ``act_clip``. Returns ``{key: [info as a dict, ...]}``.

    ``stream``: with option ``inputs="quantized"`` the input quantizers are attached first, pass-through, and
    ``observers`` (``{layer: quantizer.observe}``) go to ``weights``, which hands each of them every batch of its
    layer's input as the run captures it: exactly what a calibration pass over the finished model would show it (the
    layers before are quantized, the layer and those after do not change its input), so no calibration pass runs.
    Only when every quantized input belongs to a reconstructed layer; otherwise (and without ``stream``) observers is
    None and the quantizers are calibrated by a pass over the quantized model."""
    opts = ctx.options
    if ctx.wspec is None:
        ctx.attach_activations(clip=opts["act_clip"])
        return {key: []}
    stream = stream and opts["inputs"] == "quantized"
    layers = {split_name(n)[0] for n in select_weights(ctx.model, ctx.selection)[0]} if stream else set()
    quantizers = ctx.attach_activations(observe=False) if stream else {}
    streamed = bool(quantizers) and set(quantizers) <= layers
    infos = weights(ctx, {k: q.observe for k, q in quantizers.items()} if streamed else None)
    ctx.record_weights(infos)
    if streamed:
        ctx.finish_activations(quantizers, clip=opts["act_clip"])
    else:
        ctx.attach_activations(clip=opts["act_clip"])
    return {key: [report(info) for info in infos.values()]}


__all__ = ["INPUT_MODES", "Block", "Layer", "LayerByLayer", "LayerFn", "Observers", "WeightsFn", "capture_inputs",
           "for_each_input", "report", "run_reconstruction", "run_until_stop"]
