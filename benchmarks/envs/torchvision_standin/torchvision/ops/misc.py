"""torchvision.ops.misc stand-in: Permute (coremltools compares call targets against it)."""


import torch
from torch import nn


class Permute(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)
