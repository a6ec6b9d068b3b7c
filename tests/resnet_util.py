"""A tiny residual net with BatchNorm and a depthwise convolution, and a few Adam steps on real digits: the kind of
network on which a quantizer's training can reach states that per-tensor grids or unbounded codes cannot store
(issue 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from learnq.pipeline.data import load_dataset


class DepthwiseResNet(nn.Module):
    """``stem conv3x3-BN-ReLU -> [depthwise 3x3-BN-ReLU -> pointwise 1x1-BN] + x -> ReLU -> pool -> fc``.

    (N, C, H, W) -> (N, classes).
    """

    def __init__(self, in_channels: int = 1, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        for m in self.modules():  # torchvision's ResNet / MobileNetV2 init: weights larger than PyTorch's default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.block(x))
        return self.fc(self.pool(x).flatten(1))  # (N, width, 1, 1) -> (N, width)


def digits(name: str = "mnist5k", n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images (N, 1, H, W) and labels of a built-in data set (``mnist5k`` or ``digits``)."""
    x, y = load_dataset(name, seed=seed).train.tensors
    return x[:n], y[:n]


def adam_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-3,
               extra_groups: list[dict] | None = None, extra_loss=None, batch: int = 64) -> None:
    """``steps`` Adam steps of cross entropy (+ ``extra_loss()``) over batches of ``batch`` cycled in order."""
    ids = {id(p) for g in extra_groups or [] for p in g["params"]}
    own = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.Adam([{"params": own}, *(extra_groups or [])], lr=lr)
    model.train()
    for i in range(steps):
        start = (i * batch) % len(x)
        xb, yb = x[start:start + batch], y[start:start + batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        opt.step()
