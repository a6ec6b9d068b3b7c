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
from resnet_util import DepthwiseResNet, adam_steps, digits

import learnq
from learnq.act import MIN_CLIP, insert_activation_quantizers
from learnq.errors import QuantizationError
from learnq.quantizers import QAT_METHODS


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


def _fill(attr: str, value: float):
    def mutate(model, handle) -> None:
        with torch.no_grad():
            for q in handle.quantizers.values():
                getattr(q, attr).fill_(value)
    return mutate


def _nan_weight(model, handle) -> None:
    with torch.no_grad():
        model.stem[0].parametrizations.weight.original[0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize(("method", "mutate", "what"), [
    *[(m, _nan_weight, "has 1 NaN or Inf value") for m in QAT_METHODS],
    ("lsq", _fill("step", float("inf")), "has a step that is NaN or Inf"),
    ("lsq", _fill("step", float("nan")), "has a step that is NaN or Inf"),
    ("nested", _fill("scale", float("nan")), "has a step that is NaN or Inf"),
    ("diffq", _fill("logits", float("nan")), "has bits logits that are NaN"),
])
def test_a_diverged_state_is_refused_at_save_naming_the_parameter(method, mutate, what, tmp_path):
    torch.manual_seed(0)
    model = DepthwiseResNet()
    handle = learnq.prepare(model, QAT_METHODS[method]())
    mutate(model, handle)  # what a diverged training leaves behind
    with pytest.raises(QuantizationError, match=rf"{method}-quantized parameter stem\.0\.weight {what}.*diverged"):
        learnq.save(model.eval(), tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["lsq", "nested"])
def test_a_step_at_or_below_zero_after_the_last_optimizer_step_is_saveable(method, tmp_path):
    # LSQ's step and the nested scale are projected before each training forward; an optimizer step after the last
    # forward can still leave them at or below zero: eval and export use the projected value
    torch.manual_seed(0)
    model = DepthwiseResNet()
    handle = learnq.prepare(model, QAT_METHODS[method]())
    for value in (0.0, -1.0):
        _fill("step" if method == "lsq" else "scale", value)(model, handle)
        x = torch.randn(8, 1, 8, 8)
        with torch.no_grad():
            expected = model.eval()(x)
        learnq.save(model, tmp_path / "m.safetensors")
        fresh = learnq.load(tmp_path / "m.safetensors", DepthwiseResNet()).eval()
        with torch.no_grad():
            assert torch.isfinite(expected).all() and torch.equal(fresh(x), expected)


def test_pact_clip_pushed_below_zero_stays_positive_and_saveable(tmp_path):
    torch.manual_seed(0)
    model = DepthwiseResNet()
    learnq.prepare(model, learnq.STE())
    insert_activation_quantizers(model, bits=4, method="pact")
    pact = model.stem[2].quantizer
    x = torch.randn(8, 1, 8, 8)
    opt = torch.optim.SGD([pact.clip], lr=1.0)
    model.train()
    for _ in range(3):  # a loss that pulls α down by more than α each step: 10 -> below 0 after the first step
        opt.zero_grad()
        (model(x).sum() * 0 + 20.0 * pact.clip).backward()
        opt.step()
        assert pact.clip.item() < 0  # the optimizer's step after the forward
    model(x)
    assert pact.clip.item() == torch.tensor(MIN_CLIP).item()  # projected before the training forward
    with torch.no_grad():
        pact.clip.fill_(-1.0)  # as left by a last optimizer step
        expected = model.eval()(x)
    assert torch.isfinite(expected).all()
    learnq.save(model, tmp_path / "m.safetensors")
    fresh = learnq.load(tmp_path / "m.safetensors", DepthwiseResNet()).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_pact_clip_that_is_not_finite_is_refused_at_save(tmp_path):
    model = DepthwiseResNet()
    insert_activation_quantizers(model, bits=4, method="pact")
    with torch.no_grad():
        model.stem[2].quantizer.clip.fill_(float("inf"))
    with pytest.raises(QuantizationError, match=r"activation 'stem\.2'.*PACT clip α is inf.*diverged"):
        learnq.save(model.eval(), tmp_path / "m.safetensors")
