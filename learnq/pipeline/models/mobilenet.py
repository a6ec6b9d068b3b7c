"""A small MobileNetV2-style network.

Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (arXiv:1801.04381): the inverted
residual block of Table 1 (1x1 expansion by t -> ReLU6 -> 3x3 depthwise conv, ``groups = channels`` -> ReLU6 ->
linear 1x1 projection, with a residual connection when stride is 1 and the widths agree) and the (t, c, n, s) stage
table of Table 2, shortened for 8x8 to 64x64 inputs: the stem has stride ``stem_stride`` (1 by default) and the
network downsamples by 8 more, ending in a 1x1 conv of ``last_channels``, global average pooling and a dense layer.
Channel counts are ``width_mult`` times the table's, rounded to a multiple of 8 as in the paper's reference code.
Depthwise convolutions tend to have very different weight ranges per output channel, a hard case for per-tensor
quantization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", Fig. 2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from learnq.pipeline.models import _checks

# (expansion t, channels c, blocks n, first stride s), Sandler et al. 2018 Table 2, first five rows, fewer blocks.
SMALL_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never going below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, act: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv", nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)),
            ("bn", nn.BatchNorm2d(out_ch)),
        ]
    )
    if act:
        layers["relu"] = nn.ReLU6()
    return nn.Sequential(layers)


class InvertedResidual(nn.Module):
    """``[expand 1x1 -> ReLU6] -> depthwise 3x3 -> ReLU6 -> project 1x1 (linear)`` (+ x when shapes agree).

    (N, in, H, W) -> (N, out, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expansion != 1:
            layers["expand"] = _conv_bn_act(in_channels, hidden, 1, 1, 1, act=True)
        layers["depthwise"] = _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=True)
        layers["project"] = _conv_bn_act(hidden, out_channels, 1, 1, 1, act=False)
        self.block = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Small(nn.Module):
    """``stem (conv3x3-BN-ReLU6) -> inverted residual blocks -> head (conv1x1-BN-ReLU6) -> pool -> fc``."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        width_mult: float,
        stem_stride: int,
        last_channels: int,
        config: Sequence[tuple[int, int, int, int]] = SMALL_CONFIG,
    ) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        self.stem = _conv_bn_act(input_shape[0], in_ch, 3, stem_stride, 1, act=True)
        blocks = []
        for t, c, n, s in config:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(in_ch, last_channels, 1, 1, 1, act=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()  # (N, last_channels, 1, 1) -> (N, last_channels)
        self.fc = nn.Linear(last_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


def build_mobilenetv2_small(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width_mult: float = 1.0,
    stem_stride: int = 1,
    last_channels: int = 256,
) -> MobileNetV2Small:
    """Small MobileNetV2 (inverted residuals, depthwise 3x3 convs, ReLU6, BatchNorm) for 8x8 to 64x64 images."""
    name = "mobilenetv2-small"
    shape = _checks.input_shape(name, input_shape, ndim=3)
    classes = _checks.num_classes(name, num_classes)
    mult = _checks.positive_float(name, "width_mult", width_mult)
    stride = _checks.positive_int(name, "stem_stride", stem_stride)
    last = _checks.positive_int(name, "last_channels", last_channels)
    return MobileNetV2Small(shape, classes, mult, stride, last)  # type: ignore[arg-type]
