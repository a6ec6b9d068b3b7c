"""PACT: parameterized clipping activation (Choi et al., "PACT: Parameterized Clipping Activation for Quantized
Neural Networks", 2018, Eq. 1-3; METHODS.md section 6).

``y = clamp(x, 0, α)`` with a learnable clip ``α`` per layer, then ``k``-bit unsigned quantization
``y_q = round(y·(2^k-1)/α)·α/(2^k-1)`` with a straight-through gradient. Gradients (PACT Eq. 3):
``∂y_q/∂x = 1`` for ``0 <= x < α`` (0 elsewhere), ``∂y_q/∂α = 1`` for ``x >= α`` (0 elsewhere): the surrogate of
the family's straight-through estimator is Eq. 1 itself. PACT regularises α with L2 (weight decay on it); α's initial
value is 10 (the paper's) or 6 after a ReLU6. α must stay positive (at α <= 0 the clip maps every input to α, and
the grid's step α/(2^k-1) is no step at all): like LSQ's step, it is projected onto ``[MIN_CLIP, ∞)`` before every
training forward, and every forward (and the ONNX export) uses ``max(α, MIN_CLIP)``, so the state after the last
optimizer step is as usable and saveable as any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learnq.act.base import ActGrid, ActivationQuantizer
from learnq.checks import check_float, check_int
from learnq.errors import QuantizationError

MIN_CLIP = 1e-6  # PACT's α floor: positive, far below any useful activation range


class PACT(ActivationQuantizer):
    """PACT activation quantizer: learnable clip ``clip`` (α), ``bits``-bit unsigned grid on ``[0, α]``."""

    method = "pact"

    def __init__(self, bits: int = 4, init_clip: float = 10.0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.bits = check_int("PACT", "bits", bits, 1, 16)
        check_float("PACT", "init_clip", init_clip, strict=True)
        self.clip = nn.Parameter(torch.tensor(float(init_clip), device=device))

    def effective_clip(self) -> torch.Tensor:
        """``max(α, MIN_CLIP)``: the clip every forward uses (differentiable in α above the floor)."""
        return self.clip.clamp(min=MIN_CLIP)

    def before(self, x: torch.Tensor) -> None:
        if self.training:
            with torch.no_grad():
                self.clip.data.clamp_(min=MIN_CLIP)

    def grid(self) -> ActGrid:
        alpha = self.effective_clip().detach().float()
        step = alpha.clamp(min=torch.finfo(torch.float32).tiny) / (2**self.bits - 1)
        zero = torch.zeros_like(step)
        return ActGrid(scale=step, offset=zero, zero_point=zero, qmin=0, qmax=2**self.bits - 1)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.effective_clip().to(x.dtype)
        return torch.where(x >= alpha, alpha, x.clamp(min=0))  # PACT Eq. 1; ∂y/∂α = 1 where x >= α

    # -- wrapping and the model file (learnq.act.wrappers, learnq.act.state) -------------------------------------
    @classmethod
    def build(cls, activation: nn.Module, bits: int, device: torch.device | str, *, init_clip: float | None = None,
              momentum: float = 0.1) -> PACT:
        """The quantizer after ``activation``: α starts at ``init_clip``, default 6 after ReLU6, else 10."""
        clip = init_clip if init_clip is not None else (6.0 if isinstance(activation, nn.ReLU6) else 10.0)
        return cls(bits, clip, device=device)

    def record(self, name: str) -> dict:
        """``{"clip": α}`` for the model file."""
        clip = float(self.clip.detach())
        if not math.isfinite(clip):
            raise QuantizationError(f"activation {name!r}: its PACT clip α is {clip}, not a number a model file "
                                    "can hold; the training diverged (lower the learning rate)")
        return {"clip": clip}

    @torch.no_grad()
    def load_record(self, record: dict) -> None:
        self.clip.fill_(float(record["clip"]))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clip={float(self.clip.detach()):.4g}"


__all__ = ["MIN_CLIP", "PACT"]
