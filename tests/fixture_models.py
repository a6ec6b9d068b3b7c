"""The networks of the model files in ``tests/data/`` (written by ``tests/data/make_fixtures.py``) and the inputs they
are checked on: ``test_file_fixtures.py`` builds each network fresh (its own random initial weights, which the file
replaces) and loads the file into it."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """Two conv + BatchNorm + ReLU blocks and a linear head: BatchNorm folding and input quantizers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def mlp_relu6() -> nn.Sequential:
    """Linear, ReLU, Linear, ReLU6, Linear: one PACT wrapper after the ReLU, one observer wrapper after the ReLU6."""
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU6(), nn.Linear(10, 3))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


class Tied(nn.Module):
    """Two linear layers sharing one weight (a tied parameter) between two others."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(36, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(torch.relu(self.b(torch.relu(self.a(h)))))


BUILDERS = {"ptq_w4a8_bn": ConvBN, "qat_ste_pact_observer": mlp_relu6, "qat_diffq": mlp, "qat_nested": mlp,
            "ptq_tied_mse_w3": Tied}
"""Fixture name -> the network its file was written from (``tests/data/<name>.safetensors``)."""


def inputs(n: int = 16, seed: int = 123) -> torch.Tensor:
    """The probe batch of every fixture: (n, 1, 6, 6) normal values."""
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
