"""Layer-by-layer ("iterative") iPQ: Stock, Joulin, Gribonval, Graham, Jégou, "And the Bit Goes Down", ICLR 2020,
§3.3 "Global finetuning" and §4.1 (the layers are quantized sequentially, from the lowest to the highest, and after
each layer the network is fine-tuned); Fan et al. 2021 §3.2 / §4.2 (iPQ as the Quant-Noise paper runs it: "quantize
the network sequentially, stage by stage, fine-tuning after each"); METHODS.md §7 ("layer by layer"); seeds/003 §2
and §5.2 compare DiffQ with this PQ (Table 2's "PQ" row).

The quantizer of each layer is :class:`learnq.quantizers.ipq.IPQQuantizer` (a codebook of ``2^bits`` centroids of
``block_size`` values, k-means on the layer's blocks, centroids fine-tuned with the gradient averaged over their
blocks, assignments fixed). What this module adds is the schedule. The selected layers are numbered ``s = 0, 1, ...``
in the model's parameter order (input to output); one **step** is one training forward of the prepared model, and

    layer s stays float (its weight trains with the exact gradient) during steps 0 .. s·S - 1,
    at step s·S it is quantized: k-means on its weight *as fine-tuned so far* (Stock et al. Eq. 2), then
    from then on only its codebook trains (its float weight gets a zero gradient)

with ``S = stage_steps``. So the first layer is quantized at the first step, the last one at step ``(L-1)·S``, and a
run of ``L·S`` steps ends with ``S`` steps of fine-tuning every codebook together (Stock et al.'s global finetuning).
The steps are counted by each quantizer (a buffer ``steps``, saved in training checkpoints with the state ``active``).

A layer whose step has not come yet when the model is evaluated or saved is quantized on the spot, without changing
the training state: the k-means (same ``seed`` and ``iters``) of its current weight, recomputed only when the weight
changes; the model file is then exactly what a run stopped at that moment would leave.

Not reproduced: Stock et al. fine-tune with distillation from the float teacher and minimise the reconstruction of
the layer's *outputs* (their activation-weighted k-means, Eq. 3); learnq's k-means is the weight-space one of Fan et
al.'s fairseq implementation, and the training loss is the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learnq.checks import check_int
from learnq.grid import QuantizedTensor
from learnq.quantizers.ipq import IPQ, IPQQuantizer


class LayerwiseIPQQuantizer(IPQQuantizer):
    """iPQ of one layer that stays float until its stage (``stage_steps`` training forwards per earlier layer)."""

    method = "ipq_layerwise"

    def __init__(self, x: torch.Tensor, bits: int, block_size: int, stage_steps: int, iters: int, seed: int = 0,
                 palette_dtype: str = "float32", name: str = "") -> None:
        super().__init__(x, bits, block_size, iters, seed, palette_dtype, name)
        self.stage_steps = stage_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64, device=x.device))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool, device=x.device))
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (x, centroids, assignments)

    # -- the schedule ---------------------------------------------------------------------------------------------
    def stage(self) -> int:
        """This layer's place among the layer-by-layer iPQ layers of its model (0 when used on its own)."""
        clock = self._clock
        if clock is None:
            return 0
        staged = [m for m in clock.members if isinstance(m, LayerwiseIPQQuantizer)]
        return next(i for i, m in enumerate(staged) if m is self)

    def start_step(self) -> int:
        """The training step (0-based) at which this layer is quantized."""
        return self.stage() * self.stage_steps

    def quantize_now(self, x: torch.Tensor) -> None:
        """k-means on ``x`` (the weight as fine-tuned so far); from now on the codebook trains, not the weight."""
        centroids, assignments, objective = self.kmeans(x)
        with torch.no_grad():
            self.codebook.copy_(centroids)
            self.assignments.copy_(assignments)
            self.counts.copy_(torch.bincount(assignments, minlength=self.k))
            self.active.fill_(True)
        self.kmeans_objective = objective
        self._pending = None

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            step = int(self.steps)
            self.steps += 1
        if not bool(self.active):
            if step < self.start_step():
                # float: the exact gradient to the weight, a zero gradient to the codebook (not None, so that
                # DDP sees every parameter used)
                return x + 0.0 * self.codebook.sum() if x.requires_grad else x
            self.quantize_now(x)
        return super().train_forward(x)

    # -- eval and export before the layer's stage: the k-means of the current weight, not committed -------------
    def _ready(self, x: torch.Tensor) -> None:
        if bool(self.active):
            return
        if not bool(torch.isfinite(x).all()):
            raise self.diverged(f"has {int((~torch.isfinite(x)).sum())} NaN or Inf value(s)")
        pending = self._pending
        if pending is None or pending[0].shape != x.shape or not torch.equal(pending[0], x.detach()):
            centroids, assignments, _ = self.kmeans(x)
            self._pending = (x.detach().clone(), centroids, assignments)

    def codebook_value(self) -> torch.Tensor:
        if bool(self.active):
            return self.codebook
        self._ready(self.current_input() if self._pending is None else self._pending[0])
        assert self._pending is not None  # set by _ready
        return self._pending[1]

    def indices(self, x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        if bool(self.active):
            return self.assignments
        self._ready(x)
        assert self._pending is not None  # set by _ready
        return self._pending[2]

    def quantized_value(self, x: torch.Tensor) -> torch.Tensor:
        self._ready(x)
        return super().quantized_value(x)

    def export_quantized(self, x: torch.Tensor | None = None) -> QuantizedTensor:
        x = self._input(x)
        self._ready(x)
        return super().export_quantized(x)

    def _grid(self, x: torch.Tensor) -> tuple:
        self._ready(x)
        return super()._grid(x)

    def summary(self) -> dict:
        return {**super().summary(), "stage": self.stage(), "quantized": bool(self.active)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, stage_steps={self.stage_steps}, "
                f"{'quantized' if bool(self.active) else 'float until step ' + str(self.start_step())}")


@dataclass(frozen=True)
class IPQLayerwise(IPQ):
    """iPQ layer by layer (Stock et al. 2020's iterative schedule): the selected layers are quantized one after
    another in model order, ``stage_steps`` training forwards apart; until its step a layer trains in float, then
    its codebook (``2^bits`` centroids of ``block_size`` values, k-means with ``iters`` Lloyd steps from k-means++,
    ``seed``) is fine-tuned. Train for ``stage_steps × layers`` steps or more."""

    method = "ipq_layerwise"
    description = ("iPQ layer by layer: each layer product-quantized in turn, the later ones fine-tuned in float "
                   "in between (Stock et al.)")
    stage_steps: int = 100

    def validate(self) -> None:
        super().validate()
        check_int("IPQLayerwise", "stage_steps", self.stage_steps, 1)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> LayerwiseIPQQuantizer:
        return LayerwiseIPQQuantizer(x, bits or self.bits, self.block_size, self.stage_steps, self.iters, self.seed,
                                     self.palette_dtype, name)


__all__ = ["IPQLayerwise", "LayerwiseIPQQuantizer"]
