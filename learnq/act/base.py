"""The one activation-quantizer family: every activation quantizer of learnq computes

    y = (clamp(round((x - offset) / scale) + zero_point, qmin, qmax) - zero_point) · scale + offset

(0 where ``scale <= 0``: an α of 0), per tensor or per channel, with the straight-through gradient of
:func:`learnq.ste.ste` to a method-defined differentiable ``surrogate(x)`` (METHODS.md §0 grids; PACT Eq. 3; LAPQ
seeds/001 Eq. 3). A quantizer only says where its numbers come from: :meth:`ActivationQuantizer.grid` (PACT's learned
clip α, the observer's running range, a PTQ input quantizer's calibrated α), :meth:`~ActivationQuantizer.surrogate`
(the function whose gradient the STE uses) and :meth:`~ActivationQuantizer.before` (observe, project). The forward
(:func:`fake_quantize`), the ONNX export (``learnq.export.qdq.plan_activation`` reads the same :class:`ActGrid`) and
the model file (:mod:`learnq.act.state`) are written once for all of them.
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


class ActivationQuantizer(nn.Module):
    """Base of the activation quantizers: ``bits`` and a :meth:`grid`; the forward is the family's."""

    method: ClassVar[str] = ""
    bits: int

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.before(x)
        if not self.active():
            return x
        y = fake_quantize(x, self.grid())
        if torch.is_grad_enabled():
            return ste(self.surrogate(x), y)
        return y


__all__ = ["ActGrid", "ActivationQuantizer", "fake_quantize"]
