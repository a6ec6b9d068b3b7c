"""``learnq.prepare``: attach a training-time quantizer (STE, LSQ, nested, DiffQ) to a model's parameters in place,
and the handle that trains, measures, freezes and removes them (DESIGN.md, "QAT"; METHODS.md sections 4-6).

Plain PyTorch, in a few lines::

    handle = learnq.prepare(model, learnq.DiffQ(group_size=8))
    model_params, _ = handle.split_parameters()
    opt = torch.optim.Adam([{"params": model_params}, *handle.param_groups()], lr=1e-3)
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + handle.loss()     # DiffQ: + λ·M(b); nested: + γ-weighted terms
        loss.backward()
        opt.step()
    model.eval(); print(handle.true_size_mb())
    handle.freeze()                     # every quantizer -> a frozen QuantizedWeight; eval output unchanged
    learnq.save(model, "model.safetensors")

The quantizers are submodules of the model (``model.parameters()`` holds the bits logits, steps and scales), so the
optimizer must not see them twice: give ``split_parameters()[0]`` to the model's group and ``param_groups()`` as
extra groups (weight decay 0, the method's own lr). learnq's trainer does this when given
``extra_params=handle.param_groups()`` and ``extra_losses={"qat": lambda m: handle.loss()}``.

Under DDP (``torchrun``): prepare the model first, then wrap it in ``DistributedDataParallel``; the handle's
forward hooks are on the model itself, which DDP calls. Tied parameters (one Parameter held by several modules)
get one shared quantizer registered on every holder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.attach import Selection, bits_for, check_finite, select_parameters
from learnq.errors import ConfigError
from learnq.grid import QuantizedTensor
from learnq.parametrization import register
from learnq.quantized import Holder, attach_quantized, get_module, holders_index, split_name
from learnq.quantizers import QATConfig, WeightQuantizer, resolve_config
from learnq.quantizers.base import ForwardClock
from learnq.quantizers.diffq import MB_BITS


@dataclass
class Attachment:
    """One quantized Parameter: its primary name, its quantizer and every (module, attribute) that holds it."""

    name: str
    quantizer: WeightQuantizer
    holders: list[Holder]
    original: nn.Parameter


def _chain(module: nn.Module, attr: str) -> list[nn.Module]:
    if parametrize.is_parametrized(module, attr):
        return list(module.parametrizations[attr])  # type: ignore[index]
    return []


def _through(original: nn.Parameter, chain: list[nn.Module]) -> torch.Tensor:
    """The parameter's value through the parametrizations registered before the quantizer (no gradient)."""
    with torch.no_grad():
        x = original
        for p in chain:
            x = p(x)
        return x


def _original(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Parameter]:
    module_name, attr = split_name(name)
    module = get_module(model, module_name)
    if parametrize.is_parametrized(module, attr):
        original = module.parametrizations[attr].original  # type: ignore[index]
    else:
        original = module._parameters.get(attr)
    if not isinstance(original, nn.Parameter):
        raise ConfigError(f"{name!r} is not a Parameter of the model; learnq.prepare quantizes Parameters only")
    return module, attr, original


def prepare(model: nn.Module, method_config: QATConfig | Mapping[str, Any] | str, *,
            selection: Selection | None = None) -> QuantHandle:
    """Attach ``method_config``'s quantizer to the selected parameters of ``model`` (in place); return the handle.

    selection: which parameters (default: ``method_config.selection``, else the method's default: every linear
    and conv weight, plus biases for the nested layer). Raises ConfigError if a parameter already has a quantizer
    or a tied parameter is parametrized differently in its holders; ModelError if nothing is selected or a selected
    parameter holds NaN or Inf values (nothing is attached then).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = resolve_config(method_config)
    if selection is not None and not isinstance(selection, Selection):
        raise ConfigError(f"selection must be a learnq.attach.Selection, got {type(selection).__name__}")
    sel = selection or config.selection or config.default_selection()
    names = select_parameters(model, sel)
    index = holders_index(model)
    clock = ForwardClock(model)
    plans: list[tuple[str, nn.Parameter, list[Holder], list[nn.Module]]] = []
    aliases: dict[str, str] = {}
    by_param: dict[int, str] = {}
    for name in names:
        module, attr, original = _original(model, name)
        if id(original) in by_param:
            aliases[name] = by_param[id(original)]
            continue
        chain = _chain(module, attr)
        if chain and any(hasattr(p, "export_quantized") for p in chain):
            raise ConfigError(f"parameter {name!r} already has a quantizer ({type(chain[-1]).__name__}); call "
                              "handle.remove() (or handle.freeze()) before preparing it again")
        holders = index.get(id(original), [(split_name(name)[0], module, attr)])
        for hname, hmod, hattr in holders:
            other = _chain(hmod, hattr)
            if len(other) != len(chain) or any(a is not b for a, b in zip(other, chain, strict=False)):
                raise ConfigError(
                    f"tied parameter {name!r} is also held by '{hname}.{hattr}' with different parametrizations "
                    f"({[type(p).__name__ for p in chain]} vs {[type(p).__name__ for p in other]}); parametrize "
                    "every holder the same way before learnq.prepare")
        by_param[id(original)] = name
        check_finite(name, original, "learnq.prepare")  # before anything is attached
        if chain:
            check_finite(f"{name} (through {', '.join(type(p).__name__ for p in chain)})", _through(original, chain),
                         "learnq.prepare")
        plans.append((name, original, holders, chain))
    attachments: list[Attachment] = []
    for name, original, holders, chain in plans:
        x = _through(original, chain)
        bits = bits_for(name, None, config.bits_overrides)  # type: ignore[arg-type]
        q = config.build(name, x.detach(), bits)
        q.name = name
        q._sources = [original, *[t for p in chain for t in (*p.parameters(), *p.buffers())]]
        q._pre = list(chain)
        q._clock = clock
        q.train(model.training)
        clock.members.append(q)
        for _, hmod, hattr in holders:
            register(hmod, hattr, q)
        attachments.append(Attachment(name, q, holders, original))
    clock.sync()  # the root's hooks, while the model trains
    return QuantHandle(model, config, attachments, aliases, [clock])


class QuantHandle:
    """What :func:`prepare` returns: the quantizers, their sizes, their loss and optimizer groups, freeze/remove."""

    def __init__(self, model: nn.Module, config: QATConfig, attachments: list[Attachment], aliases: dict[str, str],
                 hooks: list[Any]) -> None:
        self.model = model
        self.config = config
        self.attachments = attachments
        self.aliases = dict(aliases)
        self._hooks = hooks
        self._closed: str | None = None
        self._frozen: dict[str, tuple[int, float]] | None = None  # after freeze(): name -> (true bits, size bits)
        self._frozen_summary: dict[str, dict[str, Any]] | None = None

    # -- views --------------------------------------------------------------------------------------------------
    @property
    def quantizers(self) -> dict[str, WeightQuantizer]:
        """Primary parameter name -> its quantizer (a tied parameter appears once; see ``aliases``)."""
        return {a.name: a.quantizer for a in self.attachments}

    def _check_open(self, what: str, frozen_ok: bool = False) -> None:
        if self._closed is not None and not (frozen_ok and self._closed == "frozen"):
            raise ConfigError(f"handle.{what}(): this handle was already {self._closed}; prepare the model again")

    def _device(self) -> torch.device:
        return self.attachments[0].original.device if self.attachments else torch.device("cpu")

    def _float_bits(self) -> int:
        """Bits of the model's parameters that are not quantized (stored as they are)."""
        quantized = {id(a.original) for a in self.attachments}
        aux = {id(p) for a in self.attachments for p in a.quantizer.parameters()}
        total = 0
        for name, p in self.model.named_parameters():
            if id(p) in quantized or id(p) in aux:
                continue
            if ".parametrizations." in f".{name}" and not name.endswith(".original"):
                continue  # parameters of other parametrizations (SatNL's a): training-time only
            total += p.numel() * p.element_size() * 8
        return total

    # -- sizes and loss ------------------------------------------------------------------------------------------
    def size_mb(self, include_float: bool = True) -> torch.Tensor:
        """Model size in MB as the method trains it: DiffQ's Eq. 8 (differentiable in the bits logits), the true
        size for the other methods; plus the unquantized parameters at their dtype's width if ``include_float``.
        After :meth:`freeze`: the value at freezing (a constant tensor)."""
        self._check_open("size_mb", frozen_ok=True)
        total = torch.zeros((), device=self._device())
        for a in self.attachments:
            if self._frozen is not None:
                total = total + self._frozen[a.name][1]
            else:
                total = total + a.quantizer.size_bits().to(total.device)
        if include_float:
            total = total + float(self._float_bits())
        return total / MB_BITS

    def true_size_mb(self, include_float: bool = True) -> float:
        """Size in MB of the exported model (DiffQ: Eq. 12 per tensor; others: codes plus float32 steps), plus the
        unquantized parameters if ``include_float``. After :meth:`freeze`: the size of the frozen tensors."""
        self._check_open("true_size_mb", frozen_ok=True)
        if self._frozen is not None:
            bits = sum(true for true, _ in self._frozen.values())
        else:
            bits = sum(a.quantizer.true_size_bits() for a in self.attachments)
        if include_float:
            bits += self._float_bits()
        return bits / MB_BITS

    def loss(self) -> torch.Tensor:
        """The method's extra loss (:meth:`learnq.quantizers.QATConfig.loss`: DiffQ ``penalty·M(b)`` over the
        quantized parameters, nested the γ-weighted custom terms), 0 for none. Call it after the model's forward
        (DiffQ detaches unused parameters' bits)."""
        self._check_open("loss")
        out = self.config.loss([a.quantizer for a in self.attachments])
        return torch.zeros((), device=self._device()) if out is None else out

    # -- optimizer ----------------------------------------------------------------------------------------------
    def quantizer_parameters(self) -> list[nn.Parameter]:
        """The quantizers' trainable tensors (bits logits, steps, scales), each once."""
        out: dict[int, nn.Parameter] = {}
        for a in self.attachments:
            for p in a.quantizer.quant_parameters():
                out.setdefault(id(p), p)
        return list(out.values())

    def param_groups(self, lr: float | None = None, **options: Any) -> list[dict]:
        """Extra optimizer groups for :meth:`quantizer_parameters`: weight decay 0 and ``lr`` (default: the method's
        own, DiffQ 1e-3 and nested 1e-4 as in their references; LSQ 1e-5: Adam cancels LSQ's gradient scale, see
        :mod:`learnq.quantizers.lsq`). Empty if there are none."""
        self._check_open("param_groups")
        params = self.quantizer_parameters()
        if not params:
            return []
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        lr = lr if lr is not None else self.config.default_lr
        if lr is not None:
            group["lr"] = lr
        group.update(options)
        return [group]

    def split_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(the model's own trainable parameters without the quantizers', the quantizers' parameters)."""
        quant = self.quantizer_parameters()
        ids = {id(p) for p in quant}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids], quant

    # -- export, freeze, remove ---------------------------------------------------------------------------------
    def export(self) -> dict[str, QuantizedTensor]:
        """Primary name -> the quantized tensor each quantizer exports now."""
        self._check_open("export")
        return {a.name: a.quantizer.export_quantized() for a in self.attachments}

    def invalidate(self) -> None:
        """Drop every cached eval tensor (after changing weights through ``.data`` in eval mode)."""
        for a in self.attachments:
            a.quantizer.invalidate()

    def freeze(self) -> dict[str, QuantizedTensor]:
        """Replace every quantizer (and the parametrizations before it) by a frozen
        :class:`learnq.quantized.QuantizedWeight` holding its exported tensor; the eval output is unchanged bit
        for bit. Returns the exported tensors. The handle is closed afterwards except for its sizes and summary
        (``size_mb``, ``true_size_mb``, ``summary``), which keep the values of the frozen model."""
        self._check_open("freeze")
        exported = self.export()
        summary = self.summary()
        sizes = {a.name: (int(a.quantizer.true_size_bits()), float(a.quantizer.size_bits().detach()))
                 for a in self.attachments}
        for a in self.attachments:  # the quantizer and the parametrizations before it -> one QuantizedWeight
            attach_quantized(self.model, a.name, exported[a.name])
        self._close("frozen")
        self._frozen, self._frozen_summary = sizes, summary
        return exported

    def remove(self) -> None:
        """Take the quantizers off (earlier parametrizations such as SatNL stay); the weights keep their trained
        float values. The handle is closed afterwards."""
        self._check_open("remove")
        for a in self.attachments:
            for _, module, attr in a.holders:
                plist = module.parametrizations[attr]  # type: ignore[index]
                idx = next(i for i, p in enumerate(plist) if p is a.quantizer)
                if len(plist) == 1:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
                else:
                    del plist[idx]
        self._close("removed")

    def _close(self, why: str) -> None:
        for h in self._hooks:
            h.close()
        for a in self.attachments:
            a.quantizer.invalidate()
            a.quantizer._clock = None
        self._closed = why

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per quantized parameter: method, shape, true size in bits and (DiffQ) mean rounded bits / (nested)
        code bits; for reports and the DiffQ bits histogram (Fig. 3). After :meth:`freeze`: the frozen model's."""
        if self._frozen_summary is not None:
            return {name: dict(row) for name, row in self._frozen_summary.items()}
        return {a.name: a.quantizer.summary() for a in self.attachments}

    def __repr__(self) -> str:
        state = f", {self._closed}" if self._closed else ""
        return f"QuantHandle({self.config.method}, {len(self.attachments)} parameters{state})"


__all__ = ["prepare", "QuantHandle", "Attachment"]
