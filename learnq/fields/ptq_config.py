"""The model-file field of the post-training quantization config (``learnq.ptq.PTQ``) a model was quantized with.

``learnq.ptq.quantize`` sets the model attribute :data:`PTQ_CONFIG_ATTR` to the config's JSON form
(``PTQ.to_dict()``: method, bits, grid, selection, options, version); the file records it under ``"ptq_config"``
and :func:`learnq.load` puts it back on the model it loads into, so a model saved again keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError

KEY = "ptq_config"
PTQ_CONFIG_ATTR = "learnq_ptq_config"


class PTQConfigField:
    key = KEY
    version = 1
    what = "PTQ config"

    def state(self, model: nn.Module) -> dict | None:
        config = getattr(model, PTQ_CONFIG_ATTR, None)
        return dict(config) if config else None

    def restore(self, model: nn.Module, value: Any, tensors: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(value, dict) or "method" not in value:
            raise ConfigError(f"its '{KEY}' metadata is malformed (a PTQ config dict with a method)")
        setattr(model, PTQ_CONFIG_ATTR, dict(value))


FIELD = PTQConfigField()

__all__ = ["FIELD", "KEY", "PTQ_CONFIG_ATTR", "PTQConfigField"]
