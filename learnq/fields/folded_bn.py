"""The model-file field of BatchNorm folding (Krishnamoorthi 2018, Sec. 3.2; :mod:`learnq.bn_fold`).

A model whose BatchNorm layers were folded before quantization (``learnq.ptq.quantize``) carries the folded
``(layer, BatchNorm)`` pairs in its attribute :data:`learnq.bn_fold.FOLDED_BN_ATTR`; the file records them under
``"folded_batchnorm"`` and :func:`learnq.load` folds the same pairs of the freshly built model it loads into, so the
file's tensors fit it (a no-op when that model is folded already).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from learnq.bn_fold import FOLDED_BN_ATTR, find_conv_bn_pairs, fold_batchnorm
from learnq.errors import ConfigError, ModelError

KEY = "folded_batchnorm"


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


class FoldedBatchNormField:
    key = KEY
    version = 1
    what = "folded BatchNorm layers"

    def state(self, model: nn.Module) -> list | None:
        folded = getattr(model, FOLDED_BN_ATTR, None)
        return [list(pair) for pair in folded] if folded else None

    def restore(self, model: nn.Module, value: Any, tensors: Mapping[str, torch.Tensor]) -> None:
        """Fold the BatchNorm layers of ``model`` that the file's model had folded."""
        try:
            pairs = [(str(layer), str(bn)) for layer, bn in value]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"its '{KEY}' metadata is malformed") from exc
        if not pairs or all(isinstance(_submodule(model, bn), nn.Identity) for _, bn in pairs):
            return
        was_training = model.training
        model.eval()
        try:
            found = find_conv_bn_pairs(model)
            if sorted(found) != sorted(pairs):
                raise ModelError(f"it was written from a model whose BatchNorm layers {pairs} were folded into the "
                                 f"layer before them, but this model's foldable pairs are {found}; load it into the "
                                 "network it was made from")
            fold_batchnorm(model, inplace=True, pairs=found)
        finally:
            model.train(was_training)
        setattr(model, FOLDED_BN_ATTR, pairs)


FIELD = FoldedBatchNormField()

__all__ = ["FIELD", "KEY", "FoldedBatchNormField"]
