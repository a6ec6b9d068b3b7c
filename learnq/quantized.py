"""Frozen quantized parameters: the in-memory form of a quantized model (DESIGN.md, "one object per parameter").

A quantized parameter is a :class:`learnq.parametrization.WeightParametrization` (a ``torch.nn.utils.parametrize``
parametrization) whose forward returns the dequantized tensor ŵ = q·scale + offset and whose
``export_quantized(x) -> QuantizedTensor`` is what ``learnq.save`` reads. This module gives the frozen one (after
PTQ, after ``handle.freeze()`` or after loading a model file), :func:`attach_quantized`, the one code path that makes
a parameter a frozen quantized tensor on every module holding it, and the helpers that walk a model's quantized
parameters, so that save, load, size accounting and reports are written once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor
from learnq.parametrization import WeightParametrization, register


class QuantizedWeight(WeightParametrization):
    """A parametrization holding a :class:`QuantizedTensor`; forward returns its dequantized values (from the base's
    cache, which tracks the buffers: codes, steps, offsets, widths, range)."""

    def __init__(self, qt: QuantizedTensor, copy: bool = True) -> None:
        super().__init__()
        own = (lambda t: t.clone()) if copy else (lambda t: t)  # copy=False: ``qt`` is handed over (load)
        # the buffers (persistent) straight into _buffers: register_buffer's name checks (a failing hasattr, i.e. an
        # AttributeError raised and caught, per buffer) cost more than the rest of the constructor
        self._buffers.update(
            codes=own(qt.codes.to(torch.int32)), scale=own(qt.scale.float()), offset=own(qt.offset.float()),
            group_bits=None if qt.group_bits is None else own(qt.group_bits),
            value_range=None if qt.value_range is None else own(qt.value_range.float()),
            palette=None if qt.palette is None else own(qt.palette))
        self.__dict__.update(granularity=qt.granularity, bits=qt.bits, qmin=qt.qmin, scheme=qt.scheme,  # plain
                             method=qt.method, out_dtype=qt.dtype, extra=dict(qt.extra))  # values (see the base)
        self.granularity: Granularity

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(codes=self.codes, scale=self.scale, offset=self.offset, granularity=self.granularity,
                               bits=self.bits, qmin=self.qmin, scheme=self.scheme, method=self.method,
                               dtype=self.out_dtype, group_bits=self.group_bits, value_range=self.value_range,
                               extra=dict(self.extra), palette=self.palette)

    def export_quantized(self, x: torch.Tensor | None = None) -> QuantizedTensor:  # noqa: ARG002 - the codes are the truth
        return self.quantized()

    def _cache_meta(self, x: torch.Tensor) -> tuple:
        return (self.out_dtype, self.granularity, self.bits, self.qmin, self.scheme)

    def _tracked(self, x: torch.Tensor) -> tuple:
        b = self._buffers  # direct dict reads: nn.Module.__getattr__ is slow and this runs per weight access
        return (b["codes"], b["scale"], b["offset"], b["value_range"], b["group_bits"], b["palette"])

    def seed_cache(self, value: torch.Tensor) -> None:
        """Make ``value`` (the parameter holding ``quantized().dequantize()`` bit for bit, as
        :func:`attach_quantized` wrote it) the cached forward value: loading then keeps one float copy, not two. A
        write into ``value`` changes its version, which the cache sees (the value is computed again)."""
        if value.dtype != self.out_dtype:
            return
        cached = value.detach()  # shares the version counter with ``value``
        tracked = self._tracked(cached)
        self._cache = (self._cache_meta(cached), tuple((t, None if t is None else t._version,
                                                        None if t is None else t.data_ptr()) for t in tracked),
                       cached, cached._version)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        # What parametrize stores as ``original``: the dequantized values (so state_dict stays meaningful).
        return value

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scheme={self.scheme}, granularity={self.granularity}, method={self.method}"


def split_name(name: str) -> tuple[str, str]:
    """``"features.0.weight"`` -> ``("features.0", "weight")``."""
    module_name, _, param = name.rpartition(".")
    return module_name, param


def get_module(model: nn.Module, module_name: str, modules: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """The submodule ``module_name`` (``modules``: ``dict(model.named_modules(remove_duplicate=False))`` when the
    caller looks up many names)."""
    if modules is not None and module_name in modules:
        return modules[module_name]
    try:
        return model.get_submodule(module_name) if module_name else model
    except AttributeError as exc:
        raise ConfigError(f"the model has no module named {module_name!r}") from exc


Holder = tuple[str, nn.Module, str]  # (module name, module, attribute) holding a Parameter


def holders_index(model: nn.Module) -> dict[int, list[Holder]]:
    """id(Parameter) -> every (module name, module, attribute) holding it, plain or as a parametrization's original.

    Tied parameters (one Parameter held by several modules, e.g. an embedding shared with the output layer) have
    several holders; a module reached under two names is one holder (its first name)."""
    index: dict[int, list[Holder]] = {}
    seen: set[tuple[int, str]] = set()

    def add(p: torch.Tensor, holder: Holder) -> None:
        key = (id(holder[1]), holder[2])
        if key not in seen:
            seen.add(key)
            index.setdefault(id(p), []).append(holder)

    for mname, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in f".{mname}.":
            continue  # the parametrizations' own tensors (``original``, a quantizer's logits) are not holders
        for attr, p in module._parameters.items():
            if p is not None:
                add(p, (mname, module, attr))
        if parametrize.is_parametrized(module):
            for attr, plist in module.parametrizations.items():  # type: ignore[union-attr]
                add(plist.original, (mname, module, attr))
    return index


def full_name(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def parameter_of(model: nn.Module, name: str, modules: Mapping[str, nn.Module] | None = None) -> torch.Tensor | None:
    """The tensor stored under ``name``: a parametrized tensor's ``original``, else the parameter or buffer."""
    module_name, attr = split_name(name)
    return _stored(get_module(model, module_name, modules), attr)


def _stored(module: nn.Module, attr: str) -> torch.Tensor | None:
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original  # type: ignore[index]
    return module._parameters.get(attr, module._buffers.get(attr))


def holders(model: nn.Module, name: str, index: dict[int, list[Holder]] | None = None,
            modules: Mapping[str, nn.Module] | None = None) -> list[Holder]:
    """Every holder of the Parameter ``name`` (``name``'s own first): more than one for a tied parameter."""
    module_name, attr = split_name(name)
    module = get_module(model, module_name, modules)
    tensor = _stored(module, attr)
    found = (index if index is not None else holders_index(model)).get(id(tensor), []) if tensor is not None else []
    own = [h for h in found if h[1] is module and h[2] == attr] or [(module_name, module, attr)]
    return own + [h for h in found if not (h[1] is module and h[2] == attr)]


def tied_groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    """``names`` grouped by the tensor they name (a tied parameter's names form one group), in order."""
    groups: dict[int, list[str]] = {}
    modules = dict(model.named_modules(remove_duplicate=False))  # once, not a submodule lookup per name
    for name in names:
        module_name, attr = split_name(name)
        module = modules.get(module_name)
        tensor = parameter_of(model, name) if module is None else _stored(module, attr)
        groups.setdefault(id(tensor) if tensor is not None else id(name), []).append(name)
    return list(groups.values())


def tied_aliases(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{alias: primary}`` for every name of ``names`` that names the same Parameter as an earlier one (a tied
    parameter: the model file stores it once, under its first name, and records the others as aliases)."""
    return {alias: group[0] for group in tied_groups(model, names) for alias in group[1:]}


def attach_quantized(model: nn.Module, name: str, qt: QuantizedTensor, *, index: dict[int, list[Holder]] | None = None,
                     take: bool = False, modules: Mapping[str, nn.Module] | None = None) -> None:
    """Make parameter ``name`` (e.g. ``"fc.weight"``) of ``model`` the frozen quantized tensor ``qt``.

    Any parametrization already on it is removed first (its current value is discarded: ``qt`` is the truth). A
    tied parameter gets one :class:`QuantizedWeight` registered on every module holding it, so all of them compute
    with the same codes. The dequantized values are written into the parameter's own storage when it is a plain
    float32 tensor of the right shape, and are the parametrization's cached value (no second copy).
    ``index``: :func:`holders_index` of ``model`` and ``modules`` its ``named_modules(remove_duplicate=False)``
    when the caller attaches many tensors (load); ``take``: ``qt``'s tensors are handed over, not copied.
    """
    module_name, param = split_name(name)
    module = get_module(model, module_name, modules)
    every = holders(model, name, index, modules)
    for _, hmod, hattr in every:
        if parametrize.is_parametrized(hmod, hattr):
            parametrize.remove_parametrizations(hmod, hattr, leave_parametrized=False)
    current = getattr(module, param, None)
    if not isinstance(current, torch.Tensor):
        raise ConfigError(f"the model has no parameter named {name!r}")
    if tuple(current.shape) != qt.shape:
        raise ConfigError(
            f"parameter {name!r} has shape {tuple(current.shape)} but the quantized tensor has {qt.shape}")
    with torch.no_grad():
        if current.dtype == qt.dtype == torch.float32 and current.device == qt.codes.device and \
                current.is_contiguous() and not current.is_inference():
            qt.dequantize(out=current.data)  # straight into the parameter (the same operations, in place)
        else:
            current.data = qt.dequantize().to(device=current.device, dtype=current.dtype)
    qw = QuantizedWeight(qt, copy=not take).to(current.device)
    for _, hmod, hattr in every:
        register(hmod, hattr, qw)
    qw.seed_cache(current)


def quantized_parameters(model: nn.Module) -> Iterator[tuple[str, QuantizedTensor]]:
    """Every parameter of ``model`` whose last parametrization exports a quantized tensor, with that tensor.

    Parametrizations before the quantizer (e.g. SatNL's saturation) are applied to the original first, so the
    exported tensor is what the quantizer saw. The tensors come from the quantizers' export caches
    (:meth:`WeightParametrization.cached_export`): treat them as read-only.
    """
    for module_name, module in model.named_modules():
        plists = getattr(module, "parametrizations", None)
        if not isinstance(plists, nn.ModuleDict):
            continue
        for param, plist in plists.items():
            last = plist[-1]
            if not hasattr(last, "export_quantized"):
                continue
            with torch.no_grad():
                x = plist.original
                for p in list(plist)[:-1]:
                    x = p(x)
                qt = last.cached_export(x) if isinstance(last, WeightParametrization) else last.export_quantized(x)
            yield (f"{module_name}.{param}" if module_name else param), qt


def plain_state(model: nn.Module, known: Mapping[str, object] | None = None,
                full_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's state under its plain (unparametrized) names, each parametrized tensor as it is computed now
    (``known``: parametrized tensors the caller has in another form, e.g. quantized; given as they are there;
    ``full_state``: ``model.state_dict()`` when the caller has it)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in (model.state_dict() if full_state is None else full_state).items():
        if ".parametrizations." not in f".{key}":
            state[key] = value
    for module_name, module in model.named_modules():
        plists = getattr(module, "parametrizations", None)
        if not isinstance(plists, nn.ModuleDict):
            continue
        for param in plists.keys():
            full = f"{module_name}.{param}" if module_name else param
            if known is not None and full in known:
                state[full] = known[full]  # type: ignore[assignment]
                continue
            with torch.no_grad():
                state[full] = getattr(module, param).detach()
    return state


def model_entries(model: nn.Module,
                  quantized: Mapping[str, QuantizedTensor] | None = None) -> dict[str, QuantizedTensor | torch.Tensor]:
    """What :func:`learnq.save` writes: every tensor of ``plain_state(model)``, quantized ones as QuantizedTensor."""
    qts = dict(quantized_parameters(model))
    full_state = model.state_dict()  # once: it walks every module
    state = plain_state(model, known=qts, full_state=full_state)  # a quantized tensor's value is not needed here
    for name, qt in (quantized or {}).items():
        if name not in state:
            raise ConfigError(f"quantized= names {name!r}, which is not a parameter or buffer of the model")
        if not isinstance(qt, QuantizedTensor):
            raise ConfigError(f"quantized[{name!r}] must be a QuantizedTensor, got {type(qt).__name__}")
        if qt.shape != tuple(state[name].shape):  # QuantizedTensor.shape and Tensor.shape compare the same
            raise ConfigError(f"quantized[{name!r}] has shape {qt.shape} but the model's tensor has "
                              f"{tuple(state[name].shape)}")
        qts[name] = qt
    # model order: a parametrized tensor at the place of its ``<module>.parametrizations.<param>.original`` key
    order: list[str] = []
    for key in full_state:
        head, sep, tail = f".{key}".partition(".parametrizations.")
        name = f"{head}.{tail.partition('.')[0]}"[1:] if sep else key
        if name in state and name not in order:
            order.append(name)
    order += [k for k in state if k not in order]
    return {name: qts.get(name, state[name]) for name in order}
