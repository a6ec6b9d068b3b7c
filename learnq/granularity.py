"""Granularity of a quantization grid: which elements share one step (METHODS.md §0, "Granularity").

Three kinds:

* ``tensor``      one step for the whole tensor;
* ``axis:K``      one step per index along axis K (``row``/``channel`` = axis 0, the output channel of a linear or
                  conv weight; ``column`` = axis 1, the input channel);
* ``group:G``     one step per run of G consecutive values of the flattened (C-order) tensor. The last group may be
                  partial: G need not divide the number of elements (a defect of the diffq package, fixed here).

Every grid, quantizer, PTQ method, size accounting and the model file read this one object, so a granularity is
written once. ``view`` gives the ``(n_groups, group_len)`` matrix that per-group statistics are computed on and
``expand`` broadcasts per-group values back to the tensor's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from learnq.errors import ConfigError

_ALIASES = {"tensor": ("tensor", 0), "per-tensor": ("tensor", 0), "row": ("axis", 0), "channel": ("axis", 0),
            "per-channel": ("axis", 0), "column": ("axis", 1)}


@dataclass(frozen=True)
class Granularity:
    """Which elements share a step. Build with :meth:`parse` (``"tensor"``, ``"channel"``, ``"group:8"``...)."""

    kind: str = "tensor"
    axis: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("tensor", "axis", "group"):
            raise ConfigError(f"granularity kind {self.kind!r} is unknown; use 'tensor', 'axis' or 'group'")
        if self.kind == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"granularity group size must be an integer >= 1, got {self.group_size!r}")
        if self.kind == "axis" and not isinstance(self.axis, int):
            raise ConfigError(f"granularity axis must be an integer, got {self.axis!r}")

    @classmethod
    def parse(cls, spec: str | Granularity) -> Granularity:
        """Parse ``tensor``, ``row``, ``channel``, ``column``, ``axis:K`` or ``group:G``."""
        if isinstance(spec, Granularity):
            return spec
        if not isinstance(spec, str):
            raise ConfigError(f"granularity must be a string such as 'tensor', 'channel' or 'group:8', got {spec!r}")
        text = spec.strip().lower()
        if text in _ALIASES:
            kind, axis = _ALIASES[text]
            return cls(kind, axis=axis)
        head, _, value = text.partition(":")
        if head in ("axis", "group") and value:
            try:
                number = int(value)
            except ValueError:
                number = None
            if number is not None:
                if head == "axis":
                    return cls("axis", axis=number)
                return cls("group", group_size=number)
        raise ConfigError(
            f"granularity {spec!r} is unknown; use 'tensor', 'row'/'channel' (axis 0), 'column' (axis 1), "
            "'axis:K' or 'group:G' with G >= 1"
        )

    def __str__(self) -> str:
        if self.kind == "tensor":
            return "tensor"
        if self.kind == "axis":
            return f"axis:{self.axis}"
        return f"group:{self.group_size}"

    # -- geometry -------------------------------------------------------------------------------------------------
    def _axis_for(self, shape: tuple[int, ...]) -> int:
        ndim = len(shape)
        if ndim == 0 or not -ndim <= self.axis < ndim:
            raise ConfigError(f"granularity axis {self.axis} does not exist in a tensor of shape {tuple(shape)}")
        return self.axis % ndim

    def num_groups(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Number of groups (steps) a tensor of this shape has."""
        shape = tuple(shape)
        numel = math.prod(shape)
        if self.kind == "tensor":
            return 1
        if self.kind == "axis":
            return shape[self._axis_for(shape)]
        return max(1, -(-numel // self.group_size))

    def view(self, w: torch.Tensor) -> torch.Tensor:
        """The ``(n_groups, group_len)`` matrix of ``w``'s values, one row per group.

        For ``group:G`` with a partial last group, the last row is padded by repeating its last value, which leaves
        the row's minimum and maximum unchanged.
        """
        if self.kind == "tensor":
            return w.reshape(1, -1)
        if self.kind == "axis":
            axis = self._axis_for(tuple(w.shape))
            return w.movedim(axis, 0).reshape(w.shape[axis], -1)
        flat = w.reshape(-1)
        pad = (-flat.numel()) % self.group_size
        if pad:
            flat = torch.cat([flat, flat[-1:].expand(pad)])
        return flat.reshape(-1, self.group_size)

    def group_mask(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean ``(n_groups, group_len)`` mask of the real (not padded) entries of :meth:`view`."""
        shape = tuple(shape)
        numel = math.prod(shape)
        n = self.num_groups(shape)
        width = max(1, numel // n) if self.kind != "group" else self.group_size
        mask = torch.ones(n * width, dtype=torch.bool, device=device)
        mask[numel:] = False
        return mask.reshape(n, width)

    def expand(self, values: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Broadcast per-group ``values`` (shape ``(n_groups,)``) to a tensor of ``shape``."""
        shape = tuple(shape)
        if self.kind == "tensor":
            return values.reshape(()).expand(shape) if shape else values.reshape(())
        if self.kind == "axis":
            axis = self._axis_for(shape)
            view_shape = [1] * len(shape)
            view_shape[axis] = shape[axis]
            return values.reshape(view_shape).expand(shape)
        numel = math.prod(shape)
        return values.repeat_interleave(self.group_size)[:numel].reshape(shape)

    def group_index(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        """The group number of every element, as a tensor of ``shape`` (int64)."""
        n = self.num_groups(tuple(shape))
        return self.expand(torch.arange(n, device=device), shape)


TENSOR = Granularity("tensor")
CHANNEL = Granularity("axis", axis=0)
