"""8-bit per-channel activations during QAT of the language model (document 003 §5, Table 2: "when also doing
activation quantization, we use per-channel min-max scaling of the activations"; the paper used PyTorch's native
support, i.e. a moving-average per-channel min-max observer).

learnq's PTQ input quantizers (:func:`learnq.act.input_quant.attach_input_quantizers`: one in front of every
quantized linear layer, none in front of embeddings, whose inputs are integer ids) are reused as they are; what
training adds is how their range moves. :class:`RangeTracker` records each training batch's per-channel minimum and
maximum of every quantizer's input (a forward pre-hook on the quantizer) and, after the step, sets
``α ← (1 - m)·α + m·max(|min|, |max|)`` (``m`` = ``MOMENTUM``, as learnq's ``ObserverFakeQuant``); the first batch
decides signed/unsigned and sets α (then the quantizers fake-quantize every later forward, with the family's
straight-through gradient). After training the hooks are removed: the quantizers are ordinary calibrated input
quantizers, so ``learnq.save`` records them and the reloaded model computes what the trained one evaluated.
"""

from __future__ import annotations

import torch
from torch import nn

MOMENTUM = 0.1
ABITS = 8


class RangeTracker:
    """Moving-average per-channel ranges of the input quantizers while training (see the module docstring)."""

    def __init__(self, model: nn.Module, bits: int = ABITS, momentum: float = MOMENTUM) -> None:
        from learnq.act.input_quant import attach_input_quantizers
        from learnq.attach import Selection

        self.quantizers = attach_input_quantizers(model, bits, selection=Selection(types=("linear", "embedding")),
                                                  per_channel=True)
        self.momentum = momentum
        self._ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks = [q.register_forward_pre_hook(self._hook(name)) for name, q in self.quantizers.items()]

    def _hook(self, name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            lo, hi = torch.aminmax(x.reshape(-1, x.shape[-1]).float(), dim=0)
            self._ranges[name] = (lo, hi)
        return record

    @torch.no_grad()
    def update(self) -> None:
        """After a training step: move every α towards the batch's range (the first batch sets it)."""
        for name, (lo, hi) in self._ranges.items():
            q = self.quantizers[name]
            if not q.calibrated:
                q.signed = bool((lo < 0).any())
            batch = torch.maximum(lo.abs(), hi.abs()) if q.signed else hi.clamp(min=0)
            q.set_alpha(batch.cpu() if not q.calibrated else (1 - self.momentum) * q.alpha + self.momentum * batch)
            q.enabled = True
        self._ranges.clear()

    def close(self) -> None:
        """Remove the recording hooks (the quantizers stay, calibrated and enabled)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
