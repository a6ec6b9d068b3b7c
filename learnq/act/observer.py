"""The min-max range observation of activation quantizers, and the observer-based fake quantizer (running min-max, as
DiffQ §5 uses for activations and as PyTorch's FakeQuantize does).

:func:`update_range` is the one observation rule: the first batch sets the range; later batches extend it
(``momentum=None``: the overall minimum and maximum, what PTQ's input quantizers calibrate on) or move it by an
exponential moving average (``momentum`` in (0, 1]).

:class:`ObserverFakeQuant` tracks the EMA range of each batch in training mode and fake-quantizes on the affine grid
over ``[min(lo, 0), max(hi, 0)]`` (zero exactly representable: an integer zero point); in eval mode it uses the
tracked range. Gradient: identity inside the range, zero outside (the family's surrogate is the clamp).
"""

from __future__ import annotations

import torch
from torch import nn

from learnq.act.base import ActGrid, ActivationQuantizer
from learnq.checks import check_float, check_int
from learnq.errors import ConfigError, QuantizationError


def update_range(lo: torch.Tensor, hi: torch.Tensor, new_lo: torch.Tensor, new_hi: torch.Tensor,
                 first: bool | torch.Tensor, momentum: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The range after observing a batch whose range is ``[new_lo, new_hi]``: the batch's when ``first``; else the
    running minimum and maximum (``momentum`` None) or their exponential moving average."""
    if momentum is None:
        if isinstance(first, bool):
            return (new_lo, new_hi) if first else (torch.minimum(lo, new_lo), torch.maximum(hi, new_hi))
        return (torch.where(first, new_lo, torch.minimum(lo, new_lo)),
                torch.where(first, new_hi, torch.maximum(hi, new_hi)))
    m = momentum
    return (torch.where(first, new_lo, (1 - m) * lo + m * new_lo),  # type: ignore[arg-type]
            torch.where(first, new_hi, (1 - m) * hi + m * new_hi))  # type: ignore[arg-type]


def keep_sample(keys: torch.Tensor | None, sample: torch.Tensor | None, rows: torch.Tensor, size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A bounded uniform random sample of every value observed so far, per row: each value of ``rows`` (rows, n)
    gets a uniform random key from ``generator`` and the ``size`` smallest keys are kept, so the sample is the same
    for the same data and seed. Returns the new (keys, sample), both (rows, <= size), on the CPU."""
    new_keys = torch.rand(rows.shape, generator=generator)
    if keys is not None and keys.shape[1] >= size:
        threshold = keys.max(dim=1, keepdim=True).values
        take = (new_keys < threshold).any(dim=0)
        new_keys, values = new_keys[:, take], rows[:, take.to(rows.device)].cpu()
    else:
        values = rows.cpu()
    if keys is not None and sample is not None:
        new_keys = torch.cat([keys, new_keys], dim=1)
        values = torch.cat([sample, values], dim=1)
    if new_keys.shape[1] > size:
        new_keys, idx = new_keys.topk(size, dim=1, largest=False, sorted=False)
        values = values.gather(1, idx)
    return new_keys, values


class ObserverFakeQuant(ActivationQuantizer):
    """Fake quantization on a running min-max range (EMA with ``momentum``), ``bits``-bit affine grid."""

    method = "observer"

    def __init__(self, bits: int = 8, momentum: float = 0.1, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.bits = check_int("ObserverFakeQuant", "bits", bits, 1, 16)
        self.momentum = check_float("ObserverFakeQuant", "momentum", momentum, strict=True)
        if self.momentum > 1:
            raise ConfigError(f"ObserverFakeQuant.momentum must be in (0, 1], got {momentum!r}")
        self.register_buffer("running_min", torch.zeros((), device=device))
        self.register_buffer("running_max", torch.zeros((), device=device))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=device))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        new_lo, new_hi = update_range(self.running_min, self.running_max, lo, hi, ~self.observed, self.momentum)
        self.running_min.copy_(new_lo)
        self.running_max.copy_(new_hi)
        self.observed.fill_(True)

    def before(self, x: torch.Tensor) -> None:
        if self.training:
            self._observe(x)


    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.running_min.clamp(max=0), self.running_max.clamp(min=0)

    def grid(self) -> ActGrid:
        if not bool(self.observed):
            raise QuantizationError("ObserverFakeQuant has not observed any data: run the model in training mode on "
                                    "some batches (calibration) before evaluating or exporting it")
        lo, hi = self._range()
        levels = 2**self.bits - 1
        scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
        return ActGrid(scale=scale, offset=torch.zeros_like(scale), zero_point=torch.round(-lo / scale), qmin=0,
                       qmax=levels)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        return torch.clamp(x, min=lo.to(x.dtype), max=hi.to(x.dtype))

    # -- wrapping and the model file (learnq.act.wrappers, learnq.act.state) -------------------------------------
    @classmethod
    def build(cls, activation: nn.Module, bits: int, device: torch.device | str, *, init_clip: float | None = None,
              momentum: float = 0.1) -> ObserverFakeQuant:
        """The quantizer after ``activation`` (``init_clip`` is PACT's, not used)."""
        return cls(bits, momentum, device=device)

    def record(self, name: str) -> dict:
        """``{"momentum", "observed", "range": [min, max]}`` for the model file."""
        return {"momentum": self.momentum, "observed": bool(self.observed),
                "range": [float(self.running_min), float(self.running_max)]}

    @torch.no_grad()
    def load_record(self, record: dict) -> None:
        lo, hi = (float(v) for v in record["range"])
        self.running_min.fill_(lo)
        self.running_max.fill_(hi)
        self.observed.fill_(bool(record["observed"]))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


__all__ = ["ObserverFakeQuant", "update_range"]
