"""ASAM: Adaptive Sharpness-Aware Minimization (Kwon, Kim, Park, Choi, ICML 2021, Algorithm 1 with p = 2; used
to train the SymReg/SatNL models of seeds/002, supplementary Table 1A; METHODS.md section 3).

One training step, around any torch optimizer (the "base" optimizer):

1. gradient ``g`` of the loss at the weights ``w``;
2. ascent: ``w ← w + ε`` with ``ε = ρ·T²·g / ‖T·g‖``, ``T`` the elementwise normalisation operator and the norm
   over all parameters together (``‖·‖₂`` of the concatenation);
3. gradient of the loss at ``w + ε``;
4. descent: restore ``w`` (exactly: the values are copied back, not ``w + ε - ε``), then the base optimizer steps
   with the gradient from 3.

``T``: ``|w| + η`` for weights, ``1`` for everything else. As in the reference code (SamsungLabs/ASAM, ``asam.py``,
which tests ``'weight' in name``), "weights" are the parameters named ``weight``: conv/linear weights and also the
affine weights of BatchNorm/LayerNorm. A parametrized weight's stored ``...parametrizations.weight.original`` counts as
a weight. Biases, DSMM temperatures, SatNL saturation levels and quantizer scales get ``T = 1`` (plain SAM on them).
We do not match names by substring (the reference would also treat, e.g., a SatNL ``...weight.0.a`` as a weight).
``‖T·g‖`` gets ``+ 1e-12`` (the reference adds 1e-16) so an all-zero gradient gives ``ε = 0``.

Only the model's parameters are perturbed. Other parameters the base optimizer holds (a DSMM regularizer's
temperatures, in their own group) are not perturbed but are stepped with the gradient computed at ``w + ε``.
Paper defaults ``ρ = 0.5, η = 0.01`` (seeds/002 used ``ρ = 1`` on ImageNet, ``0.2`` for MobileNetV3).

Usage, with a closure as for ``torch.optim.LBFGS`` (it must zero the gradients, compute the loss, call
``backward()`` and return the loss; it is called twice)::

    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
    def closure():
        asam.zero_grad()
        loss = criterion(model(x), y) + reg()
        loss.backward()
        return loss
    loss = asam.step(closure)

or by hand: ``loss.backward(); asam.ascent_step(); criterion(model(x), y).backward(); asam.descent_step()``.
Learning-rate schedulers take the base optimizer: ``torch.optim.lr_scheduler.CosineAnnealingLR(asam.optimizer, T)``.
With DistributedDataParallel each backward all-reduces the gradients, so every rank computes the same ``ε``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.regularizers.base import check_positive

_NORM_FLOOR = 1e-12


def is_weight_name(name: str) -> bool:
    """True for parameters that ASAM scales by ``|w| + η``: named ``weight``, or a parametrized weight's original."""
    return name == "weight" or name.endswith(".weight") or name.endswith("parametrizations.weight.original")


class ASAM:
    """Adaptive SAM wrapper around a base optimizer.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over (at least) the model's parameters.
        model: the model whose parameters are perturbed.
        rho: neighbourhood radius ``ρ`` (> 0).
        eta: ``η`` in ``T = |w| + η`` (>= 0).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, rho: float = 0.5, eta: float = 0.01) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.optimizer = optimizer
        self.model = model
        self.rho = check_positive(rho, "rho")
        self.eta = check_positive(eta, "eta", allow_zero=True)
        self._backup: dict[nn.Parameter, torch.Tensor] = {}  # parameter -> its value before the ascent
        self.last_perturbation_norm: float | None = None  # ‖ε‖ of the last ascent, for logs

    # -- passthrough -------------------------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (ASAM itself has no state between steps)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of the base optimizer's parameters and of the model's."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self.model.zero_grad(set_to_none=set_to_none)

    # -- the two steps -----------------------------------------------------------------------------------------
    def _t(self, name: str, p: torch.Tensor) -> torch.Tensor | None:
        """``T`` for one parameter; None means ``T = 1``."""
        return p.detach().abs().add(self.eta) if is_weight_name(name) else None

    @torch.no_grad()
    def ascent_step(self) -> None:
        """Move to ``w + ε`` using the current gradients, then zero all gradients.

        Raises ``ConfigError`` if no model parameter has a gradient (call ``loss.backward()`` first) or if an
        ascent is already pending (call ``descent_step()`` first).
        """
        if self._backup:
            raise ConfigError("ASAM.ascent_step called twice without descent_step in between")
        named = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        if not named:
            raise ConfigError("ASAM.ascent_step: no model parameter has a gradient; call loss.backward() first")
        scaled = []  # T·g per parameter
        for n, p in named:
            t = self._t(n, p)
            scaled.append(p.grad if t is None else t * p.grad)
        device = named[0][1].device
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s).to(device) for s in scaled]))
        scale = self.rho / (norm + _NORM_FLOOR)
        eps_sq = torch.zeros((), device=device)
        for (n, p), tg in zip(named, scaled, strict=True):
            t = self._t(n, p)
            eps = tg * scale.to(p.device) if t is None else t * tg * scale.to(p.device)  # ρ·T²·g/‖T·g‖
            self._backup[p] = p.detach().clone()
            p.add_(eps)
            eps_sq += (eps.float() ** 2).sum().to(device)
        self.last_perturbation_norm = float(eps_sq.sqrt())
        self.zero_grad()

    @torch.no_grad()
    def descent_step(self) -> None:
        """Restore ``w`` exactly, step the base optimizer with the current gradients (taken at ``w + ε``), then
        zero all gradients (as the reference code does)."""
        if not self._backup:
            raise ConfigError("ASAM.descent_step called without a preceding ascent_step")
        for p, value in self._backup.items():
            p.copy_(value)
        self._backup.clear()
        self.optimizer.step()
        self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One full ASAM step; ``closure`` is called twice. Returns the loss of the first call (at ``w``)."""
        if closure is None or not callable(closure):
            raise ConfigError("ASAM.step needs a closure that zeroes gradients, computes the loss, calls backward()")
        with torch.enable_grad():
            loss = closure()
        self.ascent_step()
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            # leave the model at w, not at w + ε, if the second pass fails
            with torch.no_grad():
                for p, value in self._backup.items():
                    p.copy_(value)
            self._backup.clear()
            raise
        self.descent_step()
        return loss

    def __repr__(self) -> str:
        return f"ASAM(rho={self.rho:g}, eta={self.eta:g}, optimizer={type(self.optimizer).__name__})"


__all__ = ["ASAM", "is_weight_name"]
