"""The clipping-rule PTQ methods: ``minmax``, ``mse``, ``lp``, ``aciq`` and ``kl`` (METHODS.md §2; LAPQ seeds/001
step 1 for Lp; Banner et al. for ACIQ; the TensorRT KL threshold). Each chooses α for every selected weight and for
the input of every selected layer with the same rule of :mod:`learnq.clipping` (inputs observed over the calibration
set with the quantized weights in place).
"""

from __future__ import annotations

from typing import Any

from learnq.ptq.context import PTQContext, PTQFn, PTQMethod


def clipping_method(rule: str) -> PTQFn:
    """The PTQ function that clips weights and layer inputs by ``rule`` (with the method's options)."""
    def run(ctx: PTQContext) -> dict[str, Any]:
        clip_opts = dict(ctx.options)
        ctx.attach_weights(clip=rule, **clip_opts)
        ctx.attach_activations(clip=rule, **clip_opts)
        return {}

    run.__name__ = f"ptq_{rule}"
    return run


METHODS = (
    PTQMethod("minmax", "min-max range per tensor/channel (weights) and over the calibration set (inputs)",
              clipping_method("minmax")),
    PTQMethod("mse", "minimum mean-squared-error clipping (MMSE), Lp with p = 2", clipping_method("mse")),
    PTQMethod("lp", "Lp-optimal clipping argmin mean|Q(x)-x|^p (LAPQ step 1), option p", clipping_method("lp"),
              options={"p": 2.0}),
    PTQMethod("aciq", "ACIQ analytical clipping k*sigma / k*b (Banner et al.), option distribution",
              clipping_method("aciq"), options={"distribution": "laplace"}),
    PTQMethod("kl", "KL-divergence (TensorRT) histogram threshold, option bins", clipping_method("kl"),
              options={"bins": 2048}),
)

__all__ = ["METHODS", "clipping_method"]
