"""benchmarks/text_act.py: the moving-average per-channel input ranges used for QAT with 8-bit activations on the
language model (issue 16; document 003 Table 2's activation setting). Hand-computed ranges, the quantization the
next forward applies, and a bit-exact save/load of the trained quantizers."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import learnq
from learnq.act.input_quant import input_quantizers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from text_act import RangeTracker  # noqa: E402


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2))


def test_first_batch_sets_alpha_then_moving_average():
    model = _model()
    tracker = RangeTracker(model, bits=8, momentum=0.1)
    (q,) = tracker.quantizers.values()
    x1 = torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -3.0]])  # per channel max |x|: 1, 2, 3; a negative: signed
    model(x1)
    tracker.update()
    assert q.signed is True and q.enabled
    torch.testing.assert_close(q.alpha, torch.tensor([1.0, 2.0, 3.0]), rtol=0, atol=0)
    x2 = torch.tensor([[4.0, 0.0, 0.0]])
    y = model(x2)  # quantized with the first α: channel 0 clipped to 1, the others exactly 0
    layer = model[0]
    expected = layer.weight[:, 0] + layer.bias
    torch.testing.assert_close(y[0], expected, rtol=0, atol=1e-6)  # one product and one sum in float32
    tracker.update()
    # 0.9 * [1, 2, 3] + 0.1 * [4, 0, 0]; float32 rounding of the two products and the sum: a few ulps
    torch.testing.assert_close(q.alpha, torch.tensor([1.3, 1.8, 2.7]), rtol=1e-6, atol=0)


def test_nonnegative_inputs_get_the_unsigned_grid():
    model = _model()
    tracker = RangeTracker(model)
    model(torch.tensor([[0.0, 1.0, 2.0]]))
    tracker.update()
    (q,) = tracker.quantizers.values()
    assert q.signed is False
    torch.testing.assert_close(q.alpha, torch.tensor([0.0, 1.0, 2.0]), rtol=0, atol=0)


def test_no_update_without_a_forward_and_hooks_removed_on_close():
    model = _model()
    tracker = RangeTracker(model)
    (q,) = tracker.quantizers.values()
    tracker.update()
    assert not q.calibrated and not q.enabled  # nothing observed: the quantizer stays off
    tracker.close()
    assert not q._forward_pre_hooks
    model(torch.ones(1, 3))
    tracker.update()
    assert not q.calibrated  # closed: no more recording


def test_trained_quantizers_save_and_reload_bit_exact(tmp_path):
    model = _model()
    tracker = RangeTracker(model)
    for _ in range(3):
        model(torch.randn(4, 3))
        tracker.update()
    tracker.close()
    model.eval()
    path = tmp_path / "m.safetensors"
    learnq.save(model, path)
    fresh = nn.Sequential(nn.Linear(3, 2))
    learnq.load(path, fresh)
    fresh.eval()
    (loaded,) = input_quantizers(fresh).values()
    assert torch.equal(loaded.alpha, next(iter(tracker.quantizers.values())).alpha)
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))  # same kernels, same shapes
