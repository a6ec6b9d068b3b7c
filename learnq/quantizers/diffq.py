"""DiffQ: differentiable model compression via pseudo quantization noise (Défossez, Adi, Synnaeve, TMLR 2022;
seeds/003 §4, Eq. 6, 8, 10, 11, 12; METHODS.md section 4).

Training (Eq. 6): ``ŵ = w + (Δ/2)·ε`` with ``ε ~ N(0, 1)`` (default; the paper's choice in every experiment) or
``U[-1, 1]``, ``Δ = (max(w) - min(w)) / (2^b - 1)``, the range taken per tensor and differentiable, ``b`` per group
of ``g`` consecutive weights (flattened, C order; the last group may be partial):

    b = b_min + σ(l)·(b_max - b_min)                         (Eq. 11; l initialised so that b = init_bits)
    M(b) = (1/2^23) · Σ_s n_s·b_s   MB                      (Eq. 8; n_s = g except for a partial last group)

The loss is ``task + λ·M(b)`` (Eq. 10, ``handle.loss()``). Differentiable in ``w`` and ``b``: no STE.

Evaluation: ``b̃ = round(b)``, real affine quantization on the tensor's min-max range with each group's own width:
``scale_s = (max - min)/(2^b̃_s - 1)``, ``offset = min`` (:func:`learnq.grid.range_group_params`), codes
``round((w - min)/scale_s)`` in ``[0, 2^b̃_s - 1]``, exported with ``QuantizedTensor.group_bits = b̃`` and
``value_range = [min, max]`` (the model file stores the range, not a step and an offset per group). True size per
tensor (Eq. 12):

    (2·32 + 8 + (d/g)·max(C) + Σ_s n_s·b̃_s) bits,   C = ceil(log2(1 + max_s b̃_s - b_min))

(Eq. 12 writes ``max_s log2(1 + b̃_s - b_min)``; a width must be a whole number of bits, so it is rounded up.)

Fixes of the reference package's defects (METHODS.md): groups of 15 or 16 bits are exported like any other width;
a constant tensor has Δ = 0 (no noise) and is stored exactly (step 1, offset = its value); the group size need not
divide the tensor; the eval forward is computed on the tensor's device once and cached; no pickled state.

Tied parameters share one quantizer, hence one logit vector and (through the forward clock of
:mod:`learnq.quantizers.base`) one noise sample per forward. A parameter that did not go through the training
forward in the model's latest forward (unused, e.g. a dropped layer), or that is frozen (``requires_grad=False``),
gets no bits gradient: its term of ``M(b)`` is detached (the paper zeroes the bits gradient of dropped layers, §5.2).
A parameter named in ``bits_overrides`` gets a fixed width (no logit; noise and eval at that width).

Entropy-aware size (``DiffQ(size="entropy")``, issue 18; seeds/003 §5.6): the loss is ``task + λ·Ĥ`` with ``Ĥ`` the
kernel density estimate of the entropy-coded size of the codes (:mod:`learnq.quantizers.entropy`, in MB like Eq. 8)
in place of ``M(b)``, with one histogram per tensor and width class (:func:`width_class_entropy_bits`): a real width
``b_s`` prices its group between the integer widths ``floor(b_s)`` and ``floor(b_s) + 1`` (linear weights), so the
bits get the gradient of the coded cost of one bit more, and the weights one that concentrates them on
fewer levels. Why not one histogram of all the tensor's codes (what ``learnq.size``'s entropy bound counts): the
affine grid's code 0 is the tensor's minimum whatever the width, so a group's codes at 3 bits and at 8 bits are
different alphabets; in one pooled histogram the derivative of the entropy in one group's width is the slope of the
density where that group's codes lie (its sign is ± by group: measured on the mnist5k LeNet at λ = 100, per-group
gradients of mean 3.1e-4 and standard deviation 1.1e-3, 55 % positive, where Eq. 8 gives 3.1e-4 to every group),
and the widths do not move. Conditioning on the stored width is what a coder can do, and ``H(K | B) ≤ H(K)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from learnq.checks import check_choice, check_float, check_int
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import range_group_params
from learnq.quantizers.base import WeightQuantizer
from learnq.quantizers.config import QATConfig, parse_granularity
from learnq.quantizers.entropy import MB_BITS, entropy_penalty, soft_code_bits

NOISES = ("gaussian", "uniform")
SIZES = ("naive", "entropy")  # the size term: Eq. 8, or the estimated entropy-coded size (seeds/003 §5.6)


def sample_noise(like: torch.Tensor, noise: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε of Eq. 6: standard Gaussian (default) or uniform on [-1, 1], shaped like ``like``."""
    if noise == "gaussian":
        return torch.randn(like.shape, device=like.device, dtype=like.dtype, generator=generator)
    return torch.rand(like.shape, device=like.device, dtype=like.dtype, generator=generator) * 2 - 1


def pseudo_quantize(w: torch.Tensor, bits: float | torch.Tensor, low: float | torch.Tensor,
                    high: float | torch.Tensor, noise: str = "gaussian",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 6 on the fixed range [low, high]: ``w + (Δ/2)·ε``, ``Δ = (high-low)/(2^bits-1)`` (DiffQ Fig. 1a)."""
    delta = (torch.as_tensor(high) - torch.as_tensor(low)) / (2 ** torch.as_tensor(bits, dtype=torch.float32) - 1)
    return w + delta / 2 * sample_noise(w, noise, generator)


def _extreme_indices(flat: torch.Tensor) -> torch.Tensor:
    """``[argmin, argmax]`` of a 1-D tensor (int64, shape (2,)). On the CPU through NumPy, whose vectorised argmin /
    argmax are about ten times faster than torch's on 10^5 floats; elsewhere torch's (no host synchronisation)."""
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        values = flat.numpy()
        return torch.tensor([int(values.argmin()), int(values.argmax())])
    return torch.stack([torch.argmin(flat), torch.argmax(flat)])


def width_class_entropy_bits(w: torch.Tensor, bits: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """The estimated entropy-coded size in bits of DiffQ's eval codes of ``w`` with real-valued widths ``bits`` (per
    group of ``granularity``), coded with one histogram per width class ``c`` (the coder reads each group's stored
    width), each class's histogram modelled by the whole tensor's at that width:

        Σ_i [(1 - f_i)·ℓ_i(c_i) + f_i·ℓ_i(c_i + 1)],   c_i = floor(b_s(i)),  f_i = b_s(i) - c_i,
        ℓ_i(c) = -Σ_k κ(u_i(c) - k)·log2 p̃_c,k,      u_i(c) = (w_i - min)·(2^c - 1)/(max - min)

    (``κ``, ``p̃_c``: the soft assignment and soft histogram of all ``u(c)``, :func:`learnq.quantizers.entropy.
    soft_code_bits`). A group of real width ``b`` is priced between the integer widths ``floor(b)`` and
    ``floor(b) + 1`` (wholly at ``b`` when ``b`` is an integer, where ``b + 1`` still carries the derivative), so
    the bits' gradient is the difference of the group's coded cost at the two widths (about 1 bit per weight when
    many levels are used, less at 2-3 bits); ``w`` gets its gradient through ``u`` and the histograms, not through
    the range ``[min, max]``: a wider range puts every group on a coarser grid, so the size would fall fastest by
    pushing the two extreme weights outward (measured on tests/test_entropy_size.py's MLP: the range grew 3.9x in 150
    steps and the task loss 10x); the range stays the task's (it sets the noise).
    With every group at one integer width this is :func:`learnq.quantizers.entropy.soft_entropy_bits` of the codes.
    Modelling each class by the whole tensor keeps a class with few groups from looking cheap (a histogram of 8
    values has a low entropy, but costs its own storage). A constant tensor costs 0 bits (stored as one value)."""
    flat = w.reshape(-1)
    lo, hi = torch.aminmax(flat.detach())  # the range is not trained by the size (see below)
    width = hi - lo
    if not bool(width > 0):
        return (flat * 0).sum()
    b = granularity.expand(bits, w.shape).reshape(-1)
    below = torch.floor(b.detach())
    frac = b - below  # the share of width floor(b) + 1; floor(b) gets 1 - frac
    total = flat.new_zeros(())
    for c in range(int(below.min()), int(below.max()) + 2):
        share = torch.where(below == c, 1 - frac, torch.where(below == c - 1, frac, torch.zeros_like(frac)))
        total = total + (share * soft_code_bits((flat - lo) * ((2.0**c - 1) / width))).sum()
    return total


class _PseudoQuantFn(torch.autograd.Function):
    """Eq. 6 and Eq. 11 for one tensor in one autograd node: ``ŵ = w + (hi - lo)/(2^b - 1)/2 · ε`` with
    ``b = b_min + σ(l)·span`` per group (``span = 0``: ``l`` holds fixed bits, no gradient).

    Forward: the range from one minimum and one maximum element, then one fused multiply-add over the
    ``(n_groups, g)`` view. Backward, with ``S_s = Σ_{i∈s} ∂L/∂ŵ_i·ε_i`` per group:

        ∂L/∂w = ∂L/∂ŵ  (+ ∂L/∂hi at the argmax, + ∂L/∂lo at the argmin),   ∂L/∂hi = -∂L/∂lo = Σ_s S_s / (2(2^b_s - 1))
        ∂L/∂l_s = S_s · (hi - lo)/2 · (-ln 2 · 2^b_s / (2^b_s - 1)^2) · span · σ(l_s)(1 - σ(l_s))

    the derivatives autograd takes through ``aminmax``, the sigmoid and the elementwise ops (the range's gradient
    goes to one minimum and one maximum element, where ``aminmax`` spreads it over ties, which only a tensor with
    repeated extreme values has), at a fraction of the cost: a handful of operations on the tensor, the others on
    the (n_groups,) vectors. ``rows``: the ``(n_groups, g)`` shape of the view (one row: one group per tensor).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, logits: torch.Tensor, eps: torch.Tensor,  # type: ignore[override]
                rows: tuple[int, int], b_min: float, span: float) -> torch.Tensor:
        flat = w.detach().reshape(-1)
        ends_idx = _extreme_indices(flat).to(flat.device)
        lo, hi = flat.index_select(0, ends_idx).unbind()
        width = hi - lo
        if span:
            sig = torch.sigmoid(logits.detach())
            levels = torch.exp2(sig * span + b_min).sub_(1)  # 2^b - 1, (n_groups,)
        else:
            levels = torch.exp2(logits.detach()).sub_(1)
        unit = 0.5 / levels  # ∂(Δ/2)/∂(hi - lo) per group
        noisy = torch.addcmul(flat.view(rows), (width * unit).reshape(-1, 1), eps.reshape(rows))
        slope = None  # ∂(Δ/2)/∂l per group
        if span and ctx.needs_input_grad[1]:
            slope = unit * width * (-math.log(2)) * (levels + 1) / levels * (span * sig * (1 - sig))
        ctx.save_for_backward(eps, unit, slope, ends_idx)
        ctx.rows = rows
        return noisy.view(w.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        eps, unit, slope, ends_idx = ctx.saved_tensors
        n, g = ctx.rows
        prod = grad.reshape(n, g) * eps.reshape(n, g)
        per_group = torch.mv(prod, torch.ones(g, dtype=prod.dtype, device=prod.device))  # S_s, (n_groups,)
        grad_logits = per_group * slope if slope is not None else None
        grad_w = None
        if ctx.needs_input_grad[0]:
            d_width = torch.dot(per_group, unit)
            grad_w = grad.reshape(-1).index_add(0, ends_idx, torch.stack([-d_width, d_width])).view(grad.shape)
        return grad_w, grad_logits, None, None, None, None


class DiffQQuantizer(WeightQuantizer):
    """Pseudo-quantization noise with learned bits per group (``logits``), or a fixed width (``fixed_bits``)."""

    method = "diffq"

    def __init__(self, x: torch.Tensor, group_size: int = 8, b_min: int = 2, b_max: int = 15,
                 init_bits: float = 8.0, noise: str = "gaussian", fixed_bits: int | None = None) -> None:
        shape = tuple(x.shape)
        if fixed_bits is not None or group_size == 0:
            gran = Granularity("tensor")
        else:
            gran = Granularity("group", group_size=group_size)
        super().__init__(shape, gran)
        self.group_size = group_size if gran.kind == "group" else self.numel
        self.b_min, self.b_max, self.init_bits = int(b_min), int(b_max), float(init_bits)
        self.noise = noise
        self.fixed_bits = fixed_bits
        n = gran.num_groups(shape)
        if fixed_bits is None:
            t = (self.init_bits - self.b_min) / (self.b_max - self.b_min)
            self.logits: nn.Parameter | None = nn.Parameter(torch.full((n,), math.log(t / (1 - t)), device=x.device))
        else:
            self.register_parameter("logits", None)
        counts = gran.group_mask(shape, device=x.device).sum(dim=1).float()
        self.register_buffer("group_counts", counts, persistent=False)

    # -- bits ---------------------------------------------------------------------------------------------------
    def bits(self) -> torch.Tensor:
        """Real-valued bits per group (Eq. 11), shape (n_groups,); no gradient for a frozen parameter."""
        if self.logits is None:
            return torch.full((1,), float(self.fixed_bits), device=self.group_counts.device)
        logits = self.logits.detach() if self.source_frozen() else self.logits
        return self.b_min + torch.sigmoid(logits) * (self.b_max - self.b_min)

    def rounded_bits(self) -> torch.Tensor:
        """b̃ = round(b) per group (float tensor), the widths of the real quantization."""
        with torch.no_grad():
            return torch.round(self.bits()).clamp_(self.b_min if self.logits is not None else 1, 16)

    def size_bits(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_s n_s·b_s (Eq. 8 in bits). Detached when the parameter was not used in the model's latest forward or is
        frozen, so that the size penalty gives no bits gradient to parameters that got no task gradient."""
        if self.logits is None:
            return torch.tensor(float(self.numel * self.fixed_bits), device=self.group_counts.device)
        logits = self.logits
        if not self.used_in_last_forward() or self.source_frozen():
            logits = logits.detach()
        # b_min·N + (b_max - b_min)·Σ_s n_s·σ(l_s): two operations on the (n_groups,) vector
        span = float(self.b_max - self.b_min)
        return torch.dot(self.group_counts, torch.sigmoid(logits)) * span + float(self.b_min * self.numel)

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """Eq. 12 in bits: two float32 range values, the 8-bit width of the bits field, the per-group bits field
        (``ceil(log2(1 + max b̃ - b_min))`` bits each) and the codes."""
        if self.logits is None:
            return 64 + self.numel * int(self.fixed_bits)  # type: ignore[arg-type]
        b = self.rounded_bits()
        width = math.ceil(math.log2(1 + float(b.max()) - self.b_min))
        return 64 + 8 + b.numel() * width + int((self.group_counts * b).sum())

    def soft_entropy_bits(self, x: torch.Tensor) -> torch.Tensor:
        """The estimated entropy-coded size of the eval codes of ``x`` in bits (:mod:`learnq.quantizers.entropy`),
        differentiable in ``x`` and the bits logits."""
        return width_class_entropy_bits(x.float(), self.bits(), self.granularity)

    # -- forward ------------------------------------------------------------------------------------------------
    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.float()
        eps = sample_noise(w, self.noise)
        g = self.group_size
        if self.granularity.kind == "tensor" or self.numel % g == 0:
            rows = (1, self.numel) if self.granularity.kind == "tensor" else (self.numel // g, g)
            if self.logits is None:
                return _PseudoQuantFn.apply(w, self.bits(), eps, rows, 0.0, 0.0).to(x.dtype)
            logits = self.logits.detach() if self.source_frozen() else self.logits
            return _PseudoQuantFn.apply(w, logits, eps, rows, float(self.b_min), float(self.b_max - self.b_min)) \
                .to(x.dtype)
        lo, hi = torch.aminmax(w)  # a partial last group: the plain autograd graph
        delta_half = (hi - lo) / (2 ** self.bits() - 1) / 2  # (n_groups,)
        return (w + self.granularity.expand(delta_half, x.shape) * eps).to(x.dtype)

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        w = x.float()
        lo, hi = torch.aminmax(w)
        b = self.rounded_bits()
        if not bool(torch.isfinite(b).all()):
            raise self.diverged("has bits logits that are NaN")
        params = range_group_params(lo, hi, b)  # the model file's loader computes the steps with this same function
        gran = self.granularity
        if gran.kind == "group" and self.numel % self.group_size == 0:  # full groups: broadcast over the (n, g)
            rows = w.reshape(-1, self.group_size)  # view, no per-element copy of the steps and limits
            codes = torch.round((rows - lo) / params.scale.unsqueeze(1)).clamp_(min=0)
            codes = torch.minimum(codes, (2**b - 1).unsqueeze(1)).reshape(x.shape)
        else:
            codes = torch.round((w - lo) / gran.expand(params.scale, x.shape)).clamp_(min=0)
            codes = torch.minimum(codes, gran.expand(2**b - 1, x.shape))
        return codes.to(torch.int32), params.scale, params.offset, gran

    def summary_bits(self) -> list[float]:
        return self.rounded_bits().tolist()

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        b = self.rounded_bits()
        meta: dict[str, Any] = {"bits": int(b.max()), "qmin": 0, "scheme": "affine",
                                "value_range": torch.stack(torch.aminmax(x.detach().float()))}
        if self.granularity.kind == "group":
            meta["group_bits"] = b.to(torch.uint8)
        return meta

    def extra_repr(self) -> str:
        if self.logits is None:
            return f"fixed_bits={self.fixed_bits}, noise={self.noise}"
        return f"group_size={self.group_size}, bits=[{self.b_min}, {self.b_max}], noise={self.noise}"


@dataclass(frozen=True)
class DiffQ(QATConfig):
    """DiffQ (seeds/003): pseudo-quantization noise, learned bits per group of ``group_size`` weights (0: one group
    per tensor) in ``[b_min, b_max]`` starting at ``init_bits``; ``penalty`` is λ of ``task + λ·M(b)`` (M in MB;
    the package README's example value 1e-3 is the default); ``size``: ``"naive"`` (Eq. 8) or ``"entropy"`` (the
    estimated entropy-coded size, seeds/003 §5.6)."""

    method = "diffq"
    description = "DiffQ: pseudo-quantization noise, learned bits per group, size penalty (Défossez et al. 2022)"
    default_lr: ClassVar[float | None] = 1e-3
    learns_bits: ClassVar[bool] = True
    group_size: int = 8
    b_min: int = 2
    b_max: int = 15
    init_bits: float = 8.0
    noise: str = "gaussian"
    penalty: float = 1e-3
    size: str = "naive"

    def validate(self) -> None:
        check_int("DiffQ", "group_size", self.group_size, 0)
        check_int("DiffQ", "b_min", self.b_min, 1, 16)
        check_int("DiffQ", "b_max", self.b_max, 1, 16)
        if self.b_max <= self.b_min:
            raise ConfigError(f"DiffQ.b_max ({self.b_max}) must be larger than DiffQ.b_min ({self.b_min})")
        check_float("DiffQ", "init_bits", self.init_bits)
        if not self.b_min < self.init_bits < self.b_max:
            raise ConfigError(f"DiffQ.init_bits must lie strictly between b_min={self.b_min} and b_max={self.b_max}, "
                              f"got {self.init_bits!r}")
        check_choice("DiffQ", "noise", self.noise, NOISES)
        check_float("DiffQ", "penalty", self.penalty)
        check_choice("DiffQ", "size", self.size, SIZES)

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        """``group:G``: groups of G weights; ``tensor``: one group per tensor; ``channel`` (the recipes' default):
        ``options.group_size``."""
        if raw == "channel":
            return {}
        gran = parse_granularity(raw)
        if gran.kind == "group":
            group_size = options.get("group_size", cls.group_size)
            if group_size not in (cls.group_size, gran.group_size):
                raise ConfigError(f"{raw!r} and options.group_size = {group_size} disagree; give one of them")
            return {"group_size": gran.group_size}
        if gran.kind == "tensor":
            return {"group_size": 0}
        raise ConfigError(f"diffq learns bits per group of weights; use 'group:G', 'tensor' (one group per tensor) "
                          f"or options.group_size, not {raw!r}")

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """``penalty·M(b)``, M in MB over the quantized parameters (Eq. 10), or with ``size="entropy"`` the
        estimated entropy-coded size in MB (:func:`learnq.quantizers.entropy.entropy_penalty`); None when the penalty
        is 0."""
        if self.size == "entropy":
            return entropy_penalty(quantizers, self.penalty)
        if not self.penalty or not quantizers:
            return None
        bits = sum((q.size_bits() for q in quantizers), torch.zeros((), device=quantizers[0]._device()))
        return self.penalty * bits / MB_BITS

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> DiffQQuantizer:
        return DiffQQuantizer(x, self.group_size, self.b_min, self.b_max, self.init_bits, self.noise, fixed_bits=bits)


__all__ = ["DiffQ", "DiffQQuantizer", "pseudo_quantize", "sample_noise", "width_class_entropy_bits", "MB_BITS", "SIZES"]
