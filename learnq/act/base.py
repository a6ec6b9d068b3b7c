"""The one activation-quantizer family: every activation quantizer of learnq computes

    y = (clamp(round((x - offset) / scale) + zero_point, qmin, qmax) - zero_point) · scale + offset

(0 where ``scale <= 0``: an α of 0), per tensor or per channel, with the straight-through gradient of
:func:`learnq.ste.ste` to a method-defined differentiable ``surrogate(x)`` (METHODS.md §0 grids; PACT Eq. 3; LAPQ
seeds/001 Eq. 3). A quantizer only says where its numbers come from: :meth:`ActivationQuantizer.grid` (PACT's learned
clip α, the observer's running range, a PTQ input quantizer's calibrated α), :meth:`~ActivationQuantizer.surrogate`
(the function whose gradient the STE uses) and :meth:`~ActivationQuantizer.before` (observe, project). The forward
(:func:`fake_quantize`), the ONNX export (``learnq.export.qdq.plan_activation`` reads the same :class:`ActGrid`) and
the model file (:mod:`learnq.act.state`) are written once for all of them.

Without gradients (evaluation, calibration losses: LAPQ, AdaRound, the analyses) the forward is
:meth:`ActivationQuantizer.quantize_eval`: the grid's numbers are computed once into an :class:`EvalPlan` (kept until
a parameter, buffer or attribute of the quantizer changes) and applied in one pass of fused in-place operations,
``clamp(round(x / scale), qmin, qmax) · scale`` for the usual grid (offset and zero point 0, every step > 0), or the
full formula above on the stored numbers otherwise. The values are :func:`fake_quantize`'s (the same operations on
the same numbers; only the sign of a zero result may differ, -0.0 for +0.0), which ``tests/test_act_fast.py``
checks with ``torch.equal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from learnq.ste import ste


@dataclass
class ActGrid:
    """The numbers of an activation grid (float32; ``zero_point`` whole numbers). ``channel_axis`` None: per
    tensor (0-dim tensors); else one value per channel along that axis of the input."""

    scale: torch.Tensor
    offset: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    channel_axis: int | None = None


def fake_quantize(x: torch.Tensor, grid: ActGrid) -> torch.Tensor:
    """``x`` on ``grid`` (no gradient), computed in float32 and returned in ``x``'s dtype."""
    scale, offset, zp = grid.scale, grid.offset, grid.zero_point
    if grid.channel_axis is not None:
        shape = [1] * x.ndim
        shape[grid.channel_axis] = -1
        scale, offset, zp = scale.reshape(shape), offset.reshape(shape), zp.reshape(shape)
    scale, offset, zp = scale.to(x.device), offset.to(x.device), zp.to(x.device)
    with torch.no_grad():
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = (torch.round((x.detach().float() - offset) / safe) + zp).clamp_(grid.qmin, grid.qmax)
        y = (codes - zp) * safe + offset
        return torch.where(scale > 0, y, torch.zeros_like(y)).to(x.dtype)


class EvalPlan:
    """An :class:`ActGrid` made ready for :meth:`apply` (no gradient): the numbers broadcast to the input's rank,
    and which computation applies. ``key`` is the quantizer state it was built from."""

    __slots__ = ("key", "grid", "rank", "scale", "device", "qmin", "qmax", "kind")

    def __init__(self, grid: ActGrid, rank: int, key: tuple) -> None:
        self.key, self.grid, self.rank, self.qmin, self.qmax = key, grid, rank, grid.qmin, grid.qmax
        scale = grid.scale.detach().float()
        if grid.channel_axis is not None:
            shape = [1] * rank
            shape[grid.channel_axis] = -1
            scale = scale.reshape(shape)
        self.scale, self.device = scale, scale.device
        plain = bool((scale > 0).all()) and not bool(grid.offset.detach().any()) and \
            not bool(grid.zero_point.detach().any())
        self.kind = "plain" if plain else ("zero" if not bool((scale > 0).any()) else "general")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``fake_quantize(x, grid)``'s values."""
        if self.kind == "plain":
            xf = x.detach()
            y = torch.div(xf if xf.dtype == torch.float32 else xf.float(), self.scale)
            y = y.round_().clamp_(self.qmin, self.qmax).mul_(self.scale)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        if self.kind == "zero":
            return torch.zeros_like(x)
        return fake_quantize(x, self.grid)


class ActivationQuantizer(nn.Module):
    """Base of the activation quantizers: ``bits`` and a :meth:`grid`; the forward is the family's."""

    method: ClassVar[str] = ""
    bits: int
    _plan: EvalPlan | None = None
    _generation = 0  # attribute assignments but ``training``: a changed flag (enabled, bits...) rebuilds the plan

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name != "training":  # model.eval() on every evaluation changes no grid
            self.__dict__["_generation"] = self.__dict__.get("_generation", 0) + 1

    def grid(self) -> ActGrid:
        """The grid's numbers now (detached)."""
        raise NotImplementedError

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable function of ``x`` whose gradient the straight-through estimator passes (default:
        the identity)."""
        return x

    def before(self, x: torch.Tensor) -> None:
        """Work before quantizing (observe the input, project a learned parameter); default nothing."""

    def active(self) -> bool:
        """Whether the forward quantizes (False: identity)."""
        return True

    def _state_key(self) -> tuple:
        """What the grid depends on: attribute assignments, and every parameter and buffer (object, in-place
        version, storage: so ``load_state_dict``, an optimizer step and ``.to()`` are seen)."""
        key: list = [self._generation]
        for t in (*self._parameters.values(), *self._buffers.values()):
            if t is not None:
                key += (t, t._version, t.data_ptr())
        return tuple(key)

    def quantize_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The forward without gradients: the family's values from a plan built once per quantizer state."""
        self.before(x)
        if not self.active():
            return x
        key = self._state_key()
        plan = self._plan
        if plan is None or plan.rank != x.ndim or plan.device != x.device or plan.key != key:
            plan = EvalPlan(self.grid(), x.ndim, key)
            if plan.device != x.device:
                return fake_quantize(x, plan.grid)
            self.__dict__["_plan"] = plan  # not through __setattr__: keeping a plan changes no state
        return plan.apply(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.quantize_eval(x)
        self.before(x)
        if not self.active():
            return x
        return ste(self.surrogate(x), fake_quantize(x, self.grid()))

    def __getstate__(self) -> dict:  # copies (deepcopy, pickle) start without the plan
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_plan", None)
        return state


__all__ = ["ActGrid", "ActivationQuantizer", "EvalPlan", "fake_quantize"]
