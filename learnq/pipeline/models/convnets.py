"""Plain convolutional classifiers: the thesis CIFAR-10 network and a LeNet-5 style CNN.

Thesis "Learned Quantization Schemes for Data-centric ML Pipelines" (seeds/004), Sec. 2.1.1 (convolutional layers)
and Sec. 4.1 "Experiment Networks": "For CIFAR-10, we use a convolutional network with three blocks of
convolutional layers ... followed by two dense layers." The thesis gives no widths. Defaults here: each block is
``conv3x3 (same padding) -> [BatchNorm] -> ReLU -> maxpool 2x2`` with 32, 64, 64 channels, then
``dense(192) -> ReLU -> dense(num_classes)``: 255,050 float32 parameters = 1,020,200 bytes, matching the 1.02 MB
model file the thesis reports (METHODS.md Sec. 5).

LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition"), adapted so that one network
takes 8x8, 28x28 and 32x32 inputs: both 5x5 convolutions use "same" padding, and an adaptive average pool brings the
feature map to at most 5x5 before the 120-84 dense head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from learnq.pipeline.models import _checks

THESIS_CIFAR_CHANNELS = (32, 64, 64)
THESIS_CIFAR_HIDDEN = 192


class ThesisCifarNet(nn.Module):
    """Three conv blocks + two dense layers (thesis Sec. 4.1).

    ``features``: per block ``conv{i} -> [bn{i}] -> relu{i} -> pool{i}``; (N, C, H, W) -> (N, c3, H//8, W//8).
    ``classifier``: ``flatten -> fc1 -> relu -> fc2``; -> (N, num_classes).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int, int],
        hidden: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = input_shape[0]
        for i, out_ch in enumerate(channels, start=1):
            blocks[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not batchnorm)
            if batchnorm:
                blocks[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            blocks[f"relu{i}"] = nn.ReLU()
            blocks[f"pool{i}"] = nn.MaxPool2d(2)
            in_ch = out_ch
        self.features = nn.Sequential(blocks)
        flat = channels[-1] * (input_shape[1] // 8) * (input_shape[2] // 8)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),  # (N, c3, H//8, W//8) -> (N, c3 * H//8 * W//8)
                    ("fc1", nn.Linear(flat, hidden)),
                    ("relu", nn.ReLU()),
                    ("fc2", nn.Linear(hidden, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_thesis_cifar(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    channels: Sequence[int] = THESIS_CIFAR_CHANNELS,
    hidden: int = THESIS_CIFAR_HIDDEN,
    batchnorm: bool = False,
) -> ThesisCifarNet:
    """Thesis CIFAR-10 network; ``channels`` are the three block widths, ``hidden`` the first dense width."""
    name = "thesis-cifar"
    shape = _checks.input_shape(name, input_shape, ndim=3)
    _checks.min_spatial(name, shape, 8, "three 2x2 max-pools")
    classes = _checks.num_classes(name, num_classes)
    widths = _checks.positive_ints(name, "channels", channels, length=3)
    width = _checks.positive_int(name, "hidden", hidden)
    bn = _checks.flag(name, "batchnorm", batchnorm)
    return ThesisCifarNet(shape, classes, widths, width, bn)  # type: ignore[arg-type]


class LeNet(nn.Module):
    """LeNet-5 style CNN.

    ``features``: conv1 (5x5, same) -> relu1 -> pool1 -> conv2 (5x5, same) -> relu2 -> pool2 -> adaptive avg pool;
    (N, C, H, W) -> (N, c2, min(5, H//4), min(5, W//4)).
    ``classifier``: flatten -> fc1 -> relu3 -> fc2 -> relu4 -> fc3; -> (N, num_classes).
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, int], hidden: tuple[int, int]
    ) -> None:
        super().__init__()
        out_h, out_w = min(5, input_shape[1] // 4), min(5, input_shape[2] // 4)
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(input_shape[0], channels[0], kernel_size=5, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(channels[0], channels[1], kernel_size=5, padding=2)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("adapt", nn.AdaptiveAvgPool2d((out_h, out_w))),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),  # (N, c2, out_h, out_w) -> (N, c2 * out_h * out_w)
                    ("fc1", nn.Linear(channels[1] * out_h * out_w, hidden[0])),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(hidden[0], hidden[1])),
                    ("relu4", nn.ReLU()),
                    ("fc3", nn.Linear(hidden[1], num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_lenet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    channels: Sequence[int] = (6, 16),
    hidden: Sequence[int] = (120, 84),
) -> LeNet:
    """LeNet-5 style CNN for 8x8 to 32x32 (and larger) images."""
    shape = _checks.input_shape("lenet", input_shape, ndim=3)
    _checks.min_spatial("lenet", shape, 4, "two 2x2 max-pools")
    classes = _checks.num_classes("lenet", num_classes)
    chans = _checks.positive_ints("lenet", "channels", channels, length=2)
    widths = _checks.positive_ints("lenet", "hidden", hidden, length=2)
    return LeNet(shape, classes, chans, widths)  # type: ignore[arg-type]
