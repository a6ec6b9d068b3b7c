"""torchvision.ops stand-in: stochastic_depth implemented exactly; detection ops raise NotImplementedError."""

import torch
from torch import nn

from torchvision._standin import not_provided
from torchvision.ops import misc


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """Huang et al. 2016, "Deep Networks with Stochastic Depth": drop whole rows ("row") or the batch ("batch")."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


def nms(boxes, scores, iou_threshold):
    raise not_provided("ops.nms")


def batched_nms(boxes, scores, idxs, iou_threshold):
    raise not_provided("ops.batched_nms")


def roi_align(*args, **kwargs):
    raise not_provided("ops.roi_align")


def roi_pool(*args, **kwargs):
    raise not_provided("ops.roi_pool")


class RoIPool(nn.Module):
    """Exists as a type (aimet's ONNX op map uses it as a key); building one raises."""

    def __init__(self, *args, **kwargs):
        raise not_provided("ops.RoIPool")


class RoIAlign(nn.Module):
    def __init__(self, *args, **kwargs):
        raise not_provided("ops.RoIAlign")


__all__ = ["misc", "stochastic_depth", "nms", "batched_nms", "roi_align", "roi_pool", "RoIPool", "RoIAlign"]
