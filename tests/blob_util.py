"""A small MLP trained on seeded Gaussian blobs: a deterministic "trained model" for PTQ and analysis tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def blobs(features: int, classes: int, n: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples around ``classes`` random centres (scale 2) with Gaussian noise of std ``spread``."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=gen) * 2.0
    labels = torch.randint(0, classes, (n,), generator=gen)
    return centres[labels] + torch.randn(n, features, generator=gen) * spread, labels


def trained_mlp(x: torch.Tensor, y: torch.Tensor, widths: tuple[int, ...], classes: int, steps: int,
                seed: int = 0) -> nn.Module:
    """An MLP ``x.shape[1] -> widths... -> classes`` with ReLUs, trained full-batch with Adam (lr 1e-2); eval mode."""
    torch.manual_seed(seed)
    sizes = [x.shape[1], *widths]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(sizes[-1], classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()
