"""Every state QAT training can reach is saveable (issue 10): each registered training-time quantizer, with its
default settings and PACT activations, trained with Adam on a residual net with BatchNorm and a depthwise
convolution (real MNIST digits), is written by ``learnq.save`` and reloads to bit-identical outputs.

Before the nested layer bounded its codes, one Adam step (lr 1e-3) on this net made ``learnq.save`` raise
``QuantizationError: ... 17 bits, more than 16``: the default init puts the largest weight of each channel on code
2^15 - 1, and any growth of that weight left the 16-bit range.
"""

from __future__ import annotations

import pytest
import torch

import learnq
from learnq.activations import insert_activation_quantizers
from learnq.quantizers import QAT_METHODS
from resnet_util import DepthwiseResNet, adam_steps, digits


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return digits("mnist5k", 256)


# each registered method with its defaults, plus the nested configuration (one scale per output channel)
CONFIGS = {**{name: cls() for name, cls in QAT_METHODS.items()},
           "nested-channel": learnq.Nested(granularity="channel", threshold=1e-10)}


def _train_save_reload(name: str, steps: int, data, tmp_path) -> None:
    x, y = data
    torch.manual_seed(0)
    model = DepthwiseResNet()
    handle = learnq.prepare(model, CONFIGS[name])
    insert_activation_quantizers(model, bits=4, method="pact")
    adam_steps(model, x, y, steps, extra_groups=handle.param_groups(), extra_loss=handle.loss)
    model.eval()
    with torch.no_grad():
        expected = model(x[:64])
    assert torch.isfinite(expected).all()
    path = tmp_path / f"{name}.safetensors"
    learnq.save(model, path)
    fresh = DepthwiseResNet()
    learnq.load(path, fresh)
    fresh.eval()
    with torch.no_grad():
        got = fresh(x[:64])
    assert torch.equal(got, expected)  # same dequantized weights, same kernels, same shapes


@pytest.mark.parametrize("name", list(CONFIGS))
def test_default_training_ends_in_a_saveable_model(name, data, tmp_path):
    _train_save_reload(name, 20, data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_longer_default_training_ends_in_a_saveable_model(name, data, tmp_path):
    _train_save_reload(name, 300, data, tmp_path)  # the 300 steps
