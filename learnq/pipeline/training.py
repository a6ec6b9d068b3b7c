"""The training-time sections of a recipe, set up on the model before training (docs/pipeline.md): ``[satnl]``,
``[[regularizers]]``, ``[qat]`` and ``[asam]``; and the record of what they ended with. No paper of its own: each
section points at the module of its method (learnq.regularizers, learnq.pipeline.qat_variants, learnq.optim).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from learnq.errors import ConfigError
from learnq.pipeline.registry import get_qat
from learnq.pipeline.sections import Recipe


@dataclass
class TrainingParts:
    """What :func:`prepare_training` leaves: the keyword arguments of ``train`` and the objects behind them."""

    kwargs: dict[str, Any]  # extra_losses, extra_params and, with [asam] or a [qat] that needs one, optimizer_wrapper
    regularizers: dict[str, nn.Module]  # loss key (as in the history's "extra") -> Regularizer
    qat_handle: Any = None  # the [qat] method's learnq.QuantHandle, frozen after training
    traces: dict[str, Any] = field(default_factory=dict)  # DSMM loss key -> DSMMTrace (also in kwargs["callbacks"])


def prepare_training(recipe: Recipe, model: nn.Module, device: str) -> TrainingParts:
    """Set ``model`` up for the recipe's training-time sections and return the keyword arguments of ``train``.

    In this order: ``[satnl]`` reparametrises the weights (``SatNL.apply``; first, so that everything attached later
    sees the saturated weight), ``[[regularizers]]`` are built on the model (one extra loss term each, keyed by name,
    or ``name<i>`` when a name repeats; a DSMM also gets a :class:`learnq.regularizers.dsmm_alpha.DSMMTrace`
    callback recording α and α* per epoch, its epoch-0 record taken here, in ``kwargs["callbacks"]``), ``[qat]``
    attaches its quantizers, ``[asam]`` becomes the ``optimizer_wrapper``. Changes ``model`` in place. Learnable
    SatNL levels and the regularizers' parameters get optimizer groups with ``weight_decay=0`` (at DSMM's
    ``alpha_lr`` when it has one). ``ConfigError`` if ``[asam]`` is given with a ``[qat]`` method that
    wraps the optimizer itself.
    """
    losses: dict[str, Any] = {}
    groups: list[dict] = []
    regularizers: dict[str, nn.Module] = {}
    traces: dict[str, Any] = {}
    if recipe.satnl is not None:
        from learnq.regularizers import SatNL

        SatNL.apply(model, learnable=recipe.satnl.learnable)
        scales = SatNL.scale_parameters(model)
        if scales:
            groups.append({"params": scales, "weight_decay": 0.0})
    if recipe.regularizers:
        from learnq.regularizers import build_regularizer

        names = [r.name for r in recipe.regularizers]
        for i, section in enumerate(recipe.regularizers):
            kwargs = dict(section.options)
            if section.strength is not None:
                kwargs["strength"] = section.strength
            reg = build_regularizer(section.name, model, **kwargs).to(device)
            key = section.name if names.count(section.name) == 1 else f"{section.name}{i}"
            regularizers[key] = reg
            losses[key] = lambda _model, reg=reg: reg()
            own = [p for p in reg.parameters() if p.requires_grad]
            if own:
                group = {"params": own, "weight_decay": 0.0}
                if getattr(reg, "alpha_lr", None) is not None:
                    group["lr"] = reg.alpha_lr
                groups.append(group)
            if section.name == "dsmm":
                from learnq.regularizers.dsmm_alpha import DSMMTrace

                traces[key] = DSMMTrace(reg)
                traces[key].record(0)
    extras: dict[str, Any] = {"extra_losses": losses, "extra_params": groups}
    if traces:
        extras["callbacks"] = list(traces.values())
    handle = None
    if recipe.qat is not None:
        info = get_qat(recipe.qat.method)
        prepared = dict(info.prepare(model, recipe.qat, recipe.seed, device))
        handle = prepared.pop("handle", None)
        extras["extra_losses"].update(prepared.pop("extra_losses", {}) or {})
        extras["extra_params"].extend(prepared.pop("extra_params", []) or [])
        extras.update(prepared)
    if recipe.asam is not None:
        if extras.get("optimizer_wrapper") is not None:
            raise ConfigError(f"asam: the [qat] method {recipe.qat.method!r} already wraps the optimizer; "  # type: ignore[union-attr]
                              "remove the [asam] table")
        from learnq.optim import ASAM

        rho, eta = recipe.asam.rho, recipe.asam.eta
        extras["optimizer_wrapper"] = lambda optimizer, net: ASAM(optimizer, net, rho=rho, eta=eta)
    return TrainingParts(kwargs=extras, regularizers=regularizers, qat_handle=handle, traces=traces)


def training_extras(recipe: Recipe, model: nn.Module, device: str) -> dict[str, Any]:
    """Keyword arguments of ``train`` for the recipe's training-time sections (``prepare_training(...).kwargs``)."""
    return prepare_training(recipe, model, device).kwargs


def training_summary(recipe: Recipe, model: nn.Module, regularizers: dict[str, nn.Module],
                     traces: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON record of the training-time methods at the end of training (call before ``SatNL.remove``).

    ``{"regularizers": {key: {"name", "strength", "per_layer"[, "alpha", "trace"]}}, "satnl": {"learnable", "scales"}
    | None, "asam": {"rho", "eta"} | None}``; ``per_layer`` is each layer's unweighted loss, ``alpha`` DSMM's
    temperatures, ``trace`` its per-epoch ``DSMMTrace.history`` (α, α*, dL/dα, soft range per layer).
    """
    regs: dict[str, Any] = {}
    for key, reg in regularizers.items():
        record: dict[str, Any] = {"name": reg.name, "strength": reg.strength, "per_layer": reg.per_layer()}
        if hasattr(reg, "alphas"):
            record["alpha"] = reg.alphas()
        if traces and key in traces:
            record["trace"] = traces[key].history
        regs[key] = record
    satnl = None
    if recipe.satnl is not None:
        from learnq.regularizers import SatNL

        satnl = {"learnable": recipe.satnl.learnable, "scales": SatNL.scales(model)}
    asam = None if recipe.asam is None else {"rho": recipe.asam.rho, "eta": recipe.asam.eta}
    return {"regularizers": regs, "satnl": satnl, "asam": asam}


__all__ = ["TrainingParts", "prepare_training", "training_extras", "training_summary"]
