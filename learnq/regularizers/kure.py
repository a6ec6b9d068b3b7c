"""KURE: kurtosis regularization (Shkolnik et al., "Robust Quantization: One Model to Rule Them All", NeurIPS 2020;
a baseline and a partner of SymReg/SatNL in seeds/002, supplementary Section 6 and Table 2A; METHODS.md section 3).

Per layer with weight ``W`` (mean ``μ``, standard deviation ``σ``)::

    Kurt(W) = mean(((W - μ)/σ)⁴),        L = mean_layers (Kurt(W) - K_T)²,   K_T = 1.8

``K_T = 1.8`` is the kurtosis of a uniform distribution: the loss pulls every layer towards uniform weights, whose
quantization error is the least sensitive to the grid. The reference code (moranshkolnik/RobustQuantization)
uses ``torch.std`` with Bessel's correction for ``σ``, and so do we by default (``unbiased=True``); ``unbiased=False``
gives the population moment ratio (``scipy.stats.kurtosis(fisher=False)``). ``σ`` gets ``+ 1e-12`` so an all-constant
layer gives ``Kurt = 0`` instead of a division by zero. Strength: 1.0 (the reference README) or 1e-2.
"""

from __future__ import annotations

import torch
from torch import nn

from learnq.errors import ModelError
from learnq.layers import raw_weight
from learnq.regularizers.base import Regularizer, check_positive, compute_dtype

_STD_FLOOR = 1e-12


def kurtosis(weight: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """``mean(((W - μ)/σ)⁴)`` over all values of ``weight`` (a scalar tensor); ``σ`` with Bessel's correction when
    ``unbiased``."""
    w = weight.reshape(-1).to(compute_dtype(weight))
    mu = w.mean()
    sigma = w.std(correction=1 if unbiased else 0)
    return (((w - mu) / (sigma + _STD_FLOOR)) ** 4).mean()


def kure_loss(weight: torch.Tensor, target: float = 1.8, unbiased: bool = True) -> torch.Tensor:
    """``(Kurt(W) - target)²`` for one weight tensor."""
    return (kurtosis(weight, unbiased) - target) ** 2


class KURE(Regularizer):
    """Kurtosis regularizer over the model's conv and linear weights (mean over layers).

    Args:
        model: the model whose weights are regularized; every layer needs at least 2 weights.
        strength: ``λ`` in ``task + λ·mean_layers L`` (reference: 1.0).
        target: the kurtosis to pull towards (1.8, uniform).
        unbiased: ``σ`` with Bessel's correction, as the reference code.
    """

    name = "kure"
    description = "Kurtosis regularization: pulls each layer's weight kurtosis to 1.8, uniform (Shkolnik 2020)"
    default_strength = 1.0

    def __init__(self, model: nn.Module, strength: float = 1.0, target: float = 1.8, unbiased: bool = True) -> None:
        super().__init__(model, strength)
        self.target = check_positive(target, "target")
        self.unbiased = bool(unbiased)
        for name, module in self._layers:
            if raw_weight(module).numel() < 2:
                raise ModelError(f"layer '{name}' has fewer than 2 weights: its kurtosis is undefined for KURE")

    def layer_loss(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        return kure_loss(weight, self.target, self.unbiased)

    def reduce(self, losses: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(losses).mean()

    @torch.no_grad()
    def kurtoses(self) -> dict[str, float]:
        """The current kurtosis of each layer."""
        return {name: float(kurtosis(m.weight, self.unbiased)) for name, m in self._layers}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, target={self.target:g}, unbiased={self.unbiased}"


__all__ = ["KURE", "kurtosis", "kure_loss"]
