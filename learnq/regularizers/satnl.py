"""SatNL: saturating nonlinearity on the weights (Park et al., "Symmetry Regularization and Saturating Nonlinearity
for Robust Quantization", ECCV 2022; seeds/002, supplementary Sections 2, 5 and 9; METHODS.md section 3).

Each conv/linear weight is trained through an odd, bounded function with decreasing slope; the layer (and any
quantizer) sees ``w_eff = a·tanh(w/a)``, never the stored ``w``. Large weights saturate at ``±a``, so the effective
distribution is concentrated inside ``[-a, a]`` and clipping it costs less (supplement Section 9, Eq. 5-7). The
supplement reports that other functions with the same three properties work equally well (Section 5); we use tanh.

``a`` is per layer: fixed to the layer's initial ``max|w|`` (a buffer), or, with ``learnable=True``, an
``nn.Parameter`` initialised there (it lives in the model, so ``model.parameters()`` holds it; use
``SatNL.scale_parameters(model)`` to give it a group without weight decay, which would pull it to 0). Note that with
``a = max|w|`` the effective weights at the start are ``a·tanh(w/a)``, not ``w`` (the largest becomes ``0.76·a``): the
reparametrised model does not compute the same function as before ``apply``. The paper trains from scratch.

Mechanism: a ``torch.nn.utils.parametrize`` parametrization on ``weight``, which must be the first one, so that
quantizers appended later see the saturated weight (``ConfigError`` if the weight is already parametrized).
``SatNL.remove`` bakes ``a·tanh(w/a)`` into the stored weight, keeping any parametrization registered after it.

``SatNL`` is a namespace of static methods, not the parametrization module itself: ``nn.Module.apply(fn)`` recurses
into every submodule, parametrizations included, so a module class with its own ``apply`` would break
``model.apply(init_fn)``. The parametrization module is ``TanhSaturation``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ConfigError, ModelError
from learnq.layers import raw_weight, require_weight_layers, weight_layers
from learnq.parametrization import register


class TanhSaturation(nn.Module):
    """The parametrization ``w ↦ a·tanh(w/a)``: odd, bounded by ``|a|``, slope 1 at 0 and decreasing in ``|w|``.

    ``a`` is a buffer (fixed) or, with ``learnable=True``, a Parameter; its sign does not matter (the function is
    even in ``a``), ``|a|`` is floored at the smallest normal float so it never divides by zero.
    """

    def __init__(self, a: torch.Tensor | float, learnable: bool = False) -> None:
        super().__init__()
        a_t = torch.as_tensor(a).detach().clone()
        if a_t.numel() != 1 or not bool(torch.isfinite(a_t).all()) or float(a_t) == 0.0:
            raise ConfigError(f"the SatNL saturation level a must be one finite nonzero number, got {a!r}")
        a_t = a_t.reshape(())
        if learnable:
            self.a = nn.Parameter(a_t)
        else:
            self.register_buffer("a", a_t)
        self.learnable = learnable

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        a = self.a.to(weight.dtype).abs().clamp_min(torch.finfo(weight.dtype).tiny)
        return a * torch.tanh(weight / a)

    def extra_repr(self) -> str:
        return f"a={float(self.a.detach()):.4g}, learnable={self.learnable}"


def _satnl_of(module: nn.Module) -> TanhSaturation | None:
    """The module's SatNL parametrization (always at position 0 of its weight's list), or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    first = module.parametrizations["weight"][0]  # type: ignore[index]
    return first if isinstance(first, TanhSaturation) else None


class SatNL:
    """Apply, inspect and remove the SatNL weight reparametrisation on a model's conv and linear layers."""

    @staticmethod
    def apply(model: nn.Module, learnable: bool = False) -> nn.Module:
        """Register ``a·tanh(w/a)`` on every conv/linear weight, ``a`` = that layer's current ``max|w|``.

        Changes ``model`` in place and returns it. Raises ``ConfigError`` if a weight is already parametrized
        (SatNL must come first) and ``ModelError`` if the model has no conv/linear layer or a layer's weight is all
        zeros (no range to saturate at).
        """
        layers = require_weight_layers(model, what="SatNL")
        for name, module in layers:
            if parametrize.is_parametrized(module, "weight"):
                kinds = [type(p).__name__ for p in module.parametrizations["weight"]]  # type: ignore[index]
                raise ConfigError(
                    f"the weight of layer '{name}' is already parametrized ({', '.join(kinds)}); apply SatNL first, "
                    "before attaching quantizers or other parametrizations, so that they see the saturated weight"
                )
        for name, module in layers:
            with torch.no_grad():
                a = raw_weight(module).detach().abs().max()
            if float(a) == 0.0 or not bool(torch.isfinite(a)):
                raise ModelError(
                    f"layer '{name}' has max|w| = {float(a)}; SatNL sets its saturation level from the initial range, "
                    "so initialise the weights (finite, not all zero) before applying it"
                )
            register(module, "weight", TanhSaturation(a, learnable=learnable), unsafe=False)
        return model

    @staticmethod
    def is_applied(model: nn.Module) -> bool:
        """True if any conv/linear weight of the model has a SatNL parametrization."""
        return any(_satnl_of(m) is not None for _, m in weight_layers(model))

    @staticmethod
    def scales(model: nn.Module) -> dict[str, float]:
        """The saturation level ``|a|`` of each layer with SatNL, for reports."""
        out = {}
        for name, module in weight_layers(model):
            sat = _satnl_of(module)
            if sat is not None:
                out[name] = abs(float(sat.a.detach()))
        return out

    @staticmethod
    def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
        """The learnable ``a`` Parameters (empty when SatNL was applied with ``learnable=False``)."""
        params = []
        for _, module in weight_layers(model):
            sat = _satnl_of(module)
            if sat is not None and isinstance(sat.a, nn.Parameter):
                params.append(sat.a)
        return params

    @staticmethod
    def remove(model: nn.Module) -> nn.Module:
        """Bake ``a·tanh(w/a)`` into each stored weight and drop the SatNL parametrization; in place, returns model.

        A weight whose only parametrization is SatNL becomes a plain Parameter again (same Parameter object, via
        ``parametrize.remove_parametrizations(..., leave_parametrized=True)``); where parametrizations follow SatNL,
        the stored ``original`` is overwritten with the saturated values and only SatNL is dropped, so the others
        keep working on the same input. Raises ``ConfigError`` if the model has no SatNL parametrization.
        """
        found = False
        for _, module in weight_layers(model):
            sat = _satnl_of(module)
            if sat is None:
                continue
            found = True
            plist = module.parametrizations["weight"]  # type: ignore[index]
            if len(plist) == 1:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            else:
                with torch.no_grad():
                    plist.original.copy_(sat(plist.original))
                del plist[0]
        if not found:
            raise ConfigError("SatNL.remove: the model has no SatNL parametrization (was SatNL.apply called on it?)")
        return model


__all__ = ["SatNL", "TanhSaturation"]
