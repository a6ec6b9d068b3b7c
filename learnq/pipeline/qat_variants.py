"""The training-time quantizers in the pipeline: a recipe's ``[qat]`` section and the ``nested``, ``diffq``, ``ste``
and ``lsq`` variants (METHODS.md sections 4-6; seeds/003 DiffQ, seeds/004 the nested layer; docs/qat.md).

Two ways to use them from a recipe:

* ``[qat]``: the recipe's model is trained **from scratch** with the quantizer attached (``learnq.prepare`` before
  the first step, its loss and optimizer groups handed to the trainer); after training the quantizers are frozen,
  so ``model.safetensors`` *is* the quantized model and the run's only row (a ``[qat]`` recipe has no
  ``[[variants]]``);
* ``[[variants]] method = "diffq"`` (or ``nested``, ``ste``, ``lsq``): a copy of the trained float model is
  **fine-tuned** for ``options.epochs`` epochs (default 3) with the quantizer attached, frozen and exported, so one
  recipe compares float, PTQ and QAT rows made from the same float model.

Recipe keys (both ways): ``bits`` (STE and LSQ: the fixed width, required; DiffQ and nested learn their widths, so
``bits`` must be left out), ``granularity`` (STE/LSQ: ``tensor`` or ``channel``; nested: ``tensor`` (= scalar),
``row``/``channel`` or ``column``; DiffQ: ``group:G`` or ``tensor``, otherwise ``options.group_size``),
``bits_overrides`` (parameter-name globs -> fixed bits, e.g. keep the first and last layers at 8 bits), ``select``
and the method's ``options``: its config fields (:func:`method_options`), ``quant_lr`` (lr of the quantizers' own
parameters; default: the method's, DiffQ 1e-3, nested 1e-4, LSQ the model's lr) and, for variants, the fine-tuning
schedule (:data:`FINETUNE_OPTIONS`). Everything is validated when the recipe is read.

Activations (PACT, Choi et al. 2018, Eq. 1-3, :mod:`learnq.act`): ``abits`` (a variant's own key; in
``[qat]`` ``options.abits``) wraps every ReLU/ReLU6 module of the model with an activation quantizer before training
or fine-tuning, ``options.act_method`` picks it (``"pact"``, the default: learned clip α, trained with the model's
parameters and their weight decay as PACT's L2 on α; ``"observer"``: running min-max range). The model file records
the wrapped activations, so the reloaded model computes what the trained one did; the row reports ``abits``.

Every method of the QAT registry (``learnq.quantizers.QAT_METHODS``) is a variant and a ``[qat]`` method:
:func:`qat_entries` derives both entries from its config class (description, options with their recipe defaults,
``learns_bits``, granularity strings; :class:`learnq.quantizers.QATConfig`), and
:mod:`learnq.pipeline.registry` registers them. Nothing here names a method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from learnq.act import ACTIVATION_METHODS, insert_activation_quantizers, wrapped_activations
from learnq.attach import Selection
from learnq.errors import ConfigError, LearnqError
from learnq.evaluation import split_batch, task_loss
from learnq.grid import check_bits
from learnq.pipeline.train.config import TrainConfig
from learnq.pipeline.train.optim import build_optimizer, build_scheduler
from learnq.pipeline.train.seeding import make_generator
from learnq.pipeline.variants import QATInfo, VariantInfo
from learnq.qat import QuantHandle, prepare
from learnq.quantized import quantized_parameters
from learnq.quantizers import QAT_METHODS, QATConfig

DEFAULT_GRANULARITY = "channel"  # the recipe sections' default (VariantSection / QATSection)


def method_options(method: str) -> dict[str, Any]:
    """The recipe options of QAT method ``method`` and their recipe defaults (its config's fields; one default may
    differ from the Python config's, e.g. the nested layer's ``init_bits`` is 8 in recipes, 16 in ``learnq.Nested``:
    ``QATConfig.recipe_options``)."""
    return QAT_METHODS[method].recipe_options()


QUANT_OPTIONS: dict[str, Any] = {"quant_lr": None}
FINETUNE_OPTIONS: dict[str, Any] = {"epochs": 3, "lr": 1e-3, "batch_size": 64, "optimizer": "adam",
                                    "scheduler": "cosine", "weight_decay": 0.0}
"""A variant's fine-tuning schedule: epochs over ``splits.train`` from the trained float model (seed: the run's)."""

ACT_OPTIONS: dict[str, Any] = {"act_method": None}
"""Activation quantizer options of every QAT method: ``act_method`` ("pact" or "observer"; default "pact" when
activation bits are given). A ``[qat]`` table also takes ``abits`` here (:data:`QAT_ACT_OPTIONS`); a variant has its
own ``abits`` key."""
QAT_ACT_OPTIONS: dict[str, Any] = {"abits": None, **ACT_OPTIONS}


def qat_config(method: str, *, bits: int | None, granularity: str = DEFAULT_GRANULARITY,
               options: Mapping[str, Any] | None = None, bits_overrides: Mapping[str, int] | None = None,
               select: Selection | None = None, path: str = "qat") -> QATConfig:
    """The ``learnq.prepare`` config of a recipe's ``[qat]`` table or QAT variant; ``ConfigError`` naming ``path``.

    ``options`` may hold the method's own keys (:func:`method_options`) and the pipeline's (``quant_lr``,
    fine-tuning keys), which are ignored here. ``select`` equal to the default ``Selection()`` means the method's
    default selection (nested also takes biases).
    """
    if method not in QAT_METHODS:
        raise ConfigError(f"{path}.method: {method!r} is not a training-time quantizer; use one of "
                          f"{', '.join(QAT_METHODS)}")
    cls = QAT_METHODS[method]
    defaults = cls.recipe_options()
    opts = {**defaults, **{k: v for k, v in (options or {}).items() if k in defaults}}
    if not cls.learns_bits:
        if bits is None:
            raise ConfigError(f"{path}.bits: missing; {method} trains at a fixed bit-width (1 to 16, LSQ 2 to 16)")
        opts["bits"] = bits
    elif bits is not None:
        raise ConfigError(f"{path}.bits: {method} learns its bit-widths; remove bits (use bits_overrides to fix "
                          "some parameters' widths)")
    try:
        opts.update(cls.from_granularity(granularity, opts))
    except ConfigError as exc:
        raise ConfigError(f"{path}.granularity: {exc}") from exc
    sel = None if select is None or select == Selection() else select
    try:
        return cls(**opts, bits_overrides=dict(bits_overrides or {}), selection=sel)
    except LearnqError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _check_quant_lr(options: Mapping[str, Any], path: str) -> None:
    lr = options.get("quant_lr")
    if lr is None:
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{path}.options.quant_lr: must be a finite number > 0 (or left out), got {lr!r}")


def activation_bits(section: Any, path: str) -> int | None:
    """The activation bits of a QAT variant (its ``abits``) or ``[qat]`` table (``options.abits``), checked with
    ``options.act_method``; None: float activations. ``ConfigError`` naming the key."""
    options = section.options or {}
    own = getattr(section, "abits", None)
    given = options.get("abits")
    if own is not None and given is not None and own != given:
        raise ConfigError(f"{path}: abits = {own} and options.abits = {given} disagree; give one of them")
    abits = own if own is not None else given
    key = f"{path}.abits" if own is not None else f"{path}.options.abits"
    if abits is not None:
        try:
            check_bits(abits, "abits")
        except LearnqError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    method = options.get("act_method")
    if method is not None:
        if method not in ACTIVATION_METHODS:
            raise ConfigError(f"{path}.options.act_method: unknown activation quantizer {method!r}; use "
                              f"{' or '.join(repr(m) for m in ACTIVATION_METHODS)}")
        if abits is None:
            raise ConfigError(f"{path}.options.act_method: activation bits are missing; give "
                              f"{'abits' if hasattr(section, 'abits') else 'options.abits'} (1 to 16)")
    return abits


def insert_activations(model: nn.Module, section: Any, path: str) -> list[str]:
    """Wrap ``model``'s ReLU/ReLU6 modules with the section's activation quantizers (nothing without activation
    bits); returns the wrapped names. ``ConfigError`` naming the key when the model has no such module."""
    abits = activation_bits(section, path)
    if abits is None:
        return []
    method = (section.options or {}).get("act_method") or "pact"
    try:
        return insert_activation_quantizers(model, abits, method)
    except LearnqError as exc:
        key = f"{path}.abits" if getattr(section, "abits", None) is not None else f"{path}.options.abits"
        raise ConfigError(f"{key}: {exc}") from exc


def finetune_config(options: Mapping[str, Any], seed: int = 0, device: str = "cpu",
                    path: str = "variants") -> TrainConfig:
    """The :class:`TrainConfig` of a QAT variant's fine-tuning (``options`` holding :data:`FINETUNE_OPTIONS`)."""
    values = {**FINETUNE_OPTIONS, **{k: v for k, v in options.items() if k in FINETUNE_OPTIONS}}
    config = TrainConfig(epochs=values["epochs"], batch_size=values["batch_size"], lr=values["lr"],
                         optimizer=values["optimizer"], scheduler=values["scheduler"],
                         weight_decay=values["weight_decay"], seed=seed, device=device)
    try:
        config.validate()
    except LearnqError as exc:
        text = str(exc)
        key = text.split(" ", 1)[0]
        raise ConfigError(f"{path}.options.{text}" if key in FINETUNE_OPTIONS else f"{path}.options: {text}") from exc
    return config


def validate_variant(variant: Any, path: str) -> None:
    """Recipe-time checks of a QAT variant (a ``VariantSection``): its config builds, its schedule is valid."""
    if variant.scheme != "symmetric" or variant.rounding != "nearest":
        raise ConfigError(f"{path}: scheme and rounding are not used by QAT method {variant.method!r} (STE's "
                          "scheme is options.scheme); remove them")
    qat_config(variant.method, bits=variant.bits, granularity=variant.granularity, options=variant.options,
               bits_overrides=variant.bits_overrides, select=variant.select, path=path)
    _check_quant_lr(variant.options, path)
    activation_bits(variant, path)
    finetune_config(variant.options, path=path)


def validate_qat(section: Any, path: str = "qat") -> None:
    """Recipe-time checks of a ``[qat]`` table (a ``QATSection``)."""
    qat_config(section.method, bits=section.bits, granularity=section.granularity, options=section.options,
               bits_overrides=section.bits_overrides, select=section.select, path=path)
    _check_quant_lr(section.options, path)
    activation_bits(section, path)


def section_config(section: Any, path: str) -> QATConfig:
    """The config of a validated ``VariantSection`` or ``QATSection``."""
    return qat_config(section.method, bits=section.bits, granularity=section.granularity, options=section.options,
                      bits_overrides=section.bits_overrides, select=section.select, path=path)


# -- fine-tuning ---------------------------------------------------------------------------------------------------


def finetune(model: nn.Module, handle: QuantHandle, train_set: Dataset, config: TrainConfig, *,
             quant_lr: float | None = None) -> list[dict]:
    """Train ``model`` (quantizers attached by ``handle``) for ``config.epochs`` epochs: cross-entropy plus
    ``handle.loss()``, the quantizers' parameters in ``handle.param_groups(lr=quant_lr)``.

    One process, whatever the environment (the pipeline fine-tunes variants on rank 0 only). Returns one record per
    epoch: ``{"epoch", "train_loss", "train_acc", "qat_loss", "true_size_mb"}``. ``ConfigError`` if the loss stops
    being finite (lower ``lr``).
    """
    device = torch.device(config.device)
    model.to(device)
    optimizer, _ = build_optimizer(model, config, handle.param_groups(lr=quant_lr))
    scheduler = build_scheduler(optimizer, config)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=make_generator(config.seed))
    history: list[dict] = []
    model.train()
    for epoch in range(config.epochs):
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss·n, correct, n, Σ qat loss
        steps = 0
        for batch in loader:
            x, y = split_batch(batch)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, correct = task_loss(model(x), y)
            extra = handle.loss()
            (loss + extra).backward()
            optimizer.step()
            sums += torch.stack([loss.detach().double() * x.shape[0], correct.double(),
                                 torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device),
                                 extra.detach().double()])
            steps += 1
        if scheduler is not None:
            scheduler.step()
        total, correct, n, extra_sum = sums.tolist()
        if not (math.isfinite(total) and math.isfinite(extra_sum)):
            raise ConfigError(f"QAT fine-tuning diverged in epoch {epoch + 1} (loss not finite); lower options.lr "
                              f"(now {config.lr})")
        history.append({"epoch": epoch + 1, "train_loss": total / n, "train_acc": correct / n,
                        "qat_loss": extra_sum / max(1, steps), "true_size_mb": handle.true_size_mb()})
    model.eval()
    return history


def mean_bits(model: nn.Module) -> float | None:
    """Code bits per quantized value of ``model`` (DiffQ's groups at their own widths), None if nothing is
    quantized: what a row reports as ``bits`` for a method that learns its widths."""
    seen: set[int] = set()
    bits = numel = 0
    for _, qt in quantized_parameters(model):
        if id(qt.codes) in seen:
            continue
        seen.add(id(qt.codes))
        n = qt.codes.numel()
        if qt.group_bits is not None:
            counts = qt.granularity.group_mask(qt.shape).sum(dim=1)
            bits += int((counts * qt.group_bits.to(counts.dtype).cpu()).sum())
        else:
            bits += qt.bits * n
        numel += n
    return None if numel == 0 else bits / numel


def freeze_with_summary(handle: QuantHandle) -> dict[str, Any]:
    """Freeze ``handle``'s quantizers (eval output unchanged) and return a JSON record of what was trained:
    ``{"method", "config", "true_size_mb" (the handle's, before freezing), "bits" (:func:`mean_bits`), "abits" (the
    wrapped activations' bits; None without them)}``."""
    model = handle.model
    was = model.training
    model.eval()
    try:
        size = handle.true_size_mb()
        handle.freeze()
    finally:
        model.train(was)
    act_bits = {int(w.quantizer.bits) for w in wrapped_activations(model).values()}  # type: ignore[arg-type]
    return {"method": handle.config.method, "config": handle.config.to_dict(), "true_size_mb": size,
            "bits": mean_bits(model), "abits": act_bits.pop() if len(act_bits) == 1 else None}


# -- the registry entries ------------------------------------------------------------------------------------------


def apply_qat_variant(model: nn.Module, splits: Any, variant: Any, seed: int, device: str) -> nn.Module:
    """Fine-tune a copy of the trained float model with the variant's quantizer, then freeze it (the returned model
    computes in eval mode exactly what the fine-tuned model computed, and so does its saved file)."""
    config = section_config(variant, f"variant {variant.label}")
    insert_activations(model.to(device), variant, f"variant {variant.label}")
    handle = prepare(model, config)
    finetune(model, handle, splits.train, finetune_config(variant.options, seed, device, path=f"variant "
                                                                                              f"{variant.label}"),
             quant_lr=variant.options.get("quant_lr"))
    model.eval()
    handle.freeze()
    return model


def prepare_qat(model: nn.Module, section: Any, seed: int, device: str) -> dict[str, Any]:
    """``[qat]``: attach the quantizer to the recipe's model before training; the keyword arguments of ``train``
    plus ``handle`` (which ``prepare_training`` keeps, to freeze the quantizers after training)."""
    insert_activations(model, section, "qat")
    handle = prepare(model, section_config(section, "qat"))
    return {"extra_losses": {"qat": lambda _model: handle.loss()},
            "extra_params": handle.param_groups(lr=section.options.get("quant_lr")), "handle": handle}


def qat_entries() -> tuple[list[QATInfo], list[VariantInfo]]:
    """The ``[qat]`` method and the variant of every QAT method of ``learnq.quantizers.QAT_METHODS``."""
    sections, variants = [], []
    for name, cls in QAT_METHODS.items():
        options = method_options(name)
        sections.append(QATInfo(name, cls.description, prepare_qat, options={**options, **QUANT_OPTIONS,
                                                                              **QAT_ACT_OPTIONS},
                                validate=validate_qat))
        variants.append(VariantInfo(name, f"{cls.description}; fine-tunes the trained float model, then freezes",
                                    apply_qat_variant, learned_bits=cls.learns_bits, activations=True,
                                    options={**options, **QUANT_OPTIONS, **ACT_OPTIONS, **FINETUNE_OPTIONS},
                                    validate=validate_variant))
    return sections, variants


__all__ = ["QUANT_OPTIONS", "ACT_OPTIONS", "QAT_ACT_OPTIONS", "FINETUNE_OPTIONS", "method_options", "qat_entries",
           "qat_config", "activation_bits", "insert_activations", "finetune_config",
           "validate_variant", "validate_qat", "section_config", "finetune", "mean_bits", "freeze_with_summary",
           "apply_qat_variant", "prepare_qat"]
