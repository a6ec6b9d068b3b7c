"""Dense (fully connected) classifiers: a generic MLP and the thesis MNIST network.

Thesis "Learned Quantization Schemes for Data-centric ML Pipelines" (seeds/004), Sec. 2.1.1 (dense layers,
``a = f(Wx + b)``) and Sec. 4.1 "Experiment Networks": "For MNIST, we use a small network consisting of two dense
layers". The thesis gives no hidden width. Its Sec. 4 / METHODS.md report a float model file of 0.36 MB; with
float32 parameters (``4 * (784*h + h + 10*h + 10)`` bytes) only h = 112, 113 or 114 round to 0.36 MB, so the
default hidden width is 112 (89,050 parameters, 356,200 bytes). Pass ``hidden=`` to change it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from learnq.pipeline.models import _checks

THESIS_MNIST_HIDDEN = 112


class MLP(nn.Sequential):
    """``flatten -> (fc_i -> relu_i)* -> fc_out``; each ReLU is its own module (one per activation site).

    Input ``(N, *input_shape)``, output ``(N, num_classes)`` logits. Layers are named ``fc1, relu1, fc2, ...`` so a
    state_dict reads ``fc1.weight``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int]) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["flatten"] = nn.Flatten()  # (N, *input_shape) -> (N, prod(input_shape))
        width = math.prod(input_shape)
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            width = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes


def build_mlp(input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (64,)) -> MLP:
    """Small MLP; ``hidden`` are the hidden widths (empty: a linear classifier). Fast default for ``digits``."""
    shape = _checks.input_shape("mlp", input_shape)
    classes = _checks.num_classes("mlp", num_classes)
    widths = _checks.positive_ints("mlp", "hidden", hidden, allow_empty=True)
    return MLP(shape, classes, widths)


def build_thesis_mnist(input_shape: Sequence[int], num_classes: int, *, hidden: int = THESIS_MNIST_HIDDEN) -> MLP:
    """Thesis MNIST network (Sec. 4.1): ``flatten -> dense(hidden) -> ReLU -> dense(num_classes)``."""
    shape = _checks.input_shape("thesis-mnist", input_shape)
    classes = _checks.num_classes("thesis-mnist", num_classes)
    width = _checks.positive_int("thesis-mnist", "hidden", hidden)
    return MLP(shape, classes, (width,))
