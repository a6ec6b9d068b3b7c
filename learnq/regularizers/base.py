"""Base class of the weight regularizers (DSMM, SymReg, KURE, L2): an auxiliary loss over the model's layers.

A regularizer is built on a model, remembers that model's conv and linear layers (``learnq.layers.weight_layers``)
and, when called with no argument, returns ``strength · reduce(per-layer losses)`` as a scalar tensor, where the
per-layer loss reads ``module.weight`` at call time. Reading the attribute (not a stored tensor) means the loss sees
the weight the layer computes with: after ``SatNL.apply`` that is ``a·tanh(w/a)``. Biases are never regularized.

Training loop::

    reg = DSMM(model)
    loss = criterion(model(x), y) + reg()      # or reg(model): the trainer's fn(model) -> scalar contract
    loss.backward()

The model's layers are kept in a plain list, not registered as submodules, so ``reg.parameters()`` holds only the
regularizer's own parameters (DSMM's temperatures) and ``reg.state_dict()`` never copies the model.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.layers import require_weight_layers


def check_strength(strength: Any, name: str = "strength") -> float:
    """A finite float >= 0, else ``ConfigError``."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ConfigError(f"{name} must be a float >= 0, got {strength!r} ({type(strength).__name__})")
    value = float(strength)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite float >= 0, got {strength!r}")
    return value


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0 with ``allow_zero``), else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a float, got {value!r} ({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite float {bound}, got {value!r}")
    return out


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """Losses are computed in at least float32 (half/bfloat16 weights are upcast; float64 stays float64)."""
    return torch.promote_types(weight.dtype, torch.float32)


class Regularizer(nn.Module):
    """An auxiliary weight loss over the conv and linear layers of one model.

    Subclasses set ``name``, ``description`` and ``default_strength``, implement ``layer_loss`` (the unweighted loss
    of one layer's weight, a scalar tensor) and may override ``reduce`` (default: sum over layers) and
    ``skip_depthwise`` (default: False).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_strength: ClassVar[float] = 1.0
    skip_depthwise: ClassVar[bool] = False

    def __init__(self, model: nn.Module, strength: float | None = None) -> None:
        super().__init__()
        self.strength = check_strength(self.default_strength if strength is None else strength)
        layers = require_weight_layers(
            model, include_depthwise=not self.skip_depthwise, what=f"the {type(self).__name__} regularizer"
        )
        # A plain list: the model's modules must not become submodules of the regularizer.
        self._layers: list[tuple[str, nn.Module]] = list(layers)
        # ids of the model (and of the module it wraps, for DDP/DataParallel): forward(model) accepts only these.
        self._model_ids = {id(model), id(getattr(model, "module", model))}

    # -- to implement ------------------------------------------------------------------------------------------
    def layer_loss(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of layer ``index`` (position in ``layer_names``) for its current ``weight``."""
        raise NotImplementedError

    def reduce(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """Combine the per-layer losses; the default is their sum."""
        return torch.stack(losses).sum()

    # -- shared ------------------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names (as in ``model.named_modules()``) of the layers this regularizer acts on, in order."""
        return [name for name, _ in self._layers]

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The (name, module) pairs this regularizer acts on."""
        return list(self._layers)

    def _losses(self) -> list[torch.Tensor]:
        losses = []
        device = None
        for i, (_, module) in enumerate(self._layers):
            loss = self.layer_loss(i, module.weight)  # read at call time: parametrizations apply
            device = loss.device if device is None else device
            losses.append(loss.to(device))
        return losses

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        """``strength · reduce(per-layer losses)``, a scalar tensor on the first layer's device.

        ``model`` is optional and only checked: it lets the regularizer serve as a ``fn(model) -> scalar`` extra loss
        term (``train(..., extra_losses={"dsmm": reg})``). It must be the model the regularizer was built on (or the
        module that model wraps); any other raises ``ConfigError``, since the layers were chosen at construction.
        """
        if (
            model is not None
            and id(model) not in self._model_ids
            and id(getattr(model, "module", None)) not in self._model_ids
        ):
            raise ConfigError(
                f"{type(self).__name__} was built on another model; build one regularizer per model "
                f"({type(self).__name__}(model)) and call it with that model or with no argument"
            )
        return self.strength * self.reduce(self._losses())

    @torch.no_grad()
    def per_layer(self) -> dict[str, float]:
        """The unweighted loss of each layer, for reports (no graph is built)."""
        return {name: float(loss) for name, loss in zip(self.layer_names, self._losses(), strict=True)}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the regularizer's own parameters, with ``weight_decay=0``.

        Empty for regularizers without parameters, so a training loop can always write
        ``torch.optim.SGD([{"params": model.parameters()}, *reg.param_groups(lr)], lr=lr, weight_decay=wd)``.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": check_positive(lr, "lr"), "weight_decay": 0.0}]

    def extra_repr(self) -> str:
        return f"strength={self.strength:g}, layers={len(self._layers)}"


__all__ = ["Regularizer", "check_strength", "check_positive", "compute_dtype"]
