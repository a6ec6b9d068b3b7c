"""Residual networks: ResNet-20 for CIFAR and the thesis Imagenette network.

He et al. 2016, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385): the basic block of Fig. 2 /
Eq. 2, ``y = relu(F(x) + W_s x)``, and the CIFAR-10 networks of Sec. 4.2 (a 3x3 stem with 16 channels, then three
stages of n blocks with 16, 32, 64 channels, global average pooling and a dense layer; ResNet-20 is n = 3). Where a
block changes shape its shortcut is a 1x1 convolution + BatchNorm (the paper's option B) so that every layer is a
standard layer; with 10 classes ResNet-20 then has 272,474 parameters (option A, zero-padding: 0.27M).

Thesis "Learned Quantization Schemes for Data-centric ML Pipelines" (seeds/004), Sec. 4.1: "The Imagenette model is a
ResNet-inspired architecture, featuring an initial convolutional block followed by four stages of residual
blocks." The thesis gives no widths; the default here is the ResNet-18 layout (7x7/2 stem + 3x3/2 max-pool, four
stages of two basic blocks with 64, 128, 256, 512 channels): 11.18M parameters (44.7 MB in float32; the thesis
reports a 39.57 MB file). ``width`` scales all stages, so tests can build it small.

Every BatchNorm directly follows the convolution it normalises (foldable, see ``learnq.bn_fold``) and every
ReLU is its own module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from learnq.pipeline.models import _checks


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``; (N, in, H, W) -> (N, out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)),
                        ("bn", nn.BatchNorm2d(out_channels)),
                    ]
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # not in place: parametrized weights stay intact


class ResNet(nn.Module):
    """``stem -> layer1 .. layerK -> global average pool -> flatten -> fc``.

    ``stem`` maps (N, C, H, W) to (N, stem_channels, H', W'); stage k has ``blocks[k]`` basic blocks of
    ``widths[k]`` channels, the first with stride ``strides[k]``.
    """

    def __init__(
        self,
        stem: nn.Sequential,
        stem_channels: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stage_names: tuple[str, ...] = tuple(f"layer{k}" for k in range(1, len(widths) + 1))
        in_ch = stem_channels
        for name, width, n, stride in zip(self.stage_names, widths, blocks, strides, strict=True):
            layers = [BasicBlock(in_ch if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            setattr(self, name, nn.Sequential(*layers))
            in_ch = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()  # (N, C, 1, 1) -> (N, C)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.pool(x)))


def _conv_bn_relu_stem(in_channels: int, out_channels: int, kernel: int, stride: int, maxpool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv", nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)),
            ("bn", nn.BatchNorm2d(out_channels)),
            ("relu", nn.ReLU()),
        ]
    )
    if maxpool:
        layers["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(layers)


def build_resnet20(input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): 3 stages x 3 basic blocks, 16/32/64 x ``width_mult`` channels."""
    shape = _checks.input_shape("resnet20", input_shape, ndim=3)
    classes = _checks.num_classes("resnet20", num_classes)
    mult = _checks.positive_float("resnet20", "width_mult", width_mult)
    widths = [max(1, round(c * mult)) for c in (16, 32, 64)]
    stem = _conv_bn_relu_stem(shape[0], widths[0], 3, 1, maxpool=False)
    return ResNet(stem, widths[0], widths, (3, 3, 3), (1, 2, 2), classes)


def build_thesis_imagenette(
    input_shape: Sequence[int], num_classes: int, *, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)
) -> ResNet:
    """Thesis Imagenette network (Sec. 4.1): 7x7/2 conv stem + max-pool, four residual stages, ``width * (1,2,4,8)``."""
    name = "thesis-imagenette"
    shape = _checks.input_shape(name, input_shape, ndim=3)
    classes = _checks.num_classes(name, num_classes)
    w = _checks.positive_int(name, "width", width)
    counts = _checks.positive_ints(name, "blocks", blocks, length=4)
    stem = _conv_bn_relu_stem(shape[0], w, 7, 2, maxpool=True)
    return ResNet(stem, w, [w, 2 * w, 4 * w, 8 * w], counts, (1, 2, 2, 2), classes)
