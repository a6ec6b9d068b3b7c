"""Tests for learnq.act: observers, the unsigned/signed grids, hooks, calibration and saved state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import learnq
from learnq.act import (
    ATTR,
    ActQuantizer,
    activation_state,
    attach_input_quantizers,
    calibrate,
    input_quantizers,
    remove_input_quantizers,
    restore_activation_state,
)
from learnq.attach import Selection
from learnq.clipping import choose_clip
from learnq.errors import DataError, ModelError, QuantizationError


def test_observer_statistics_and_bounded_seeded_sample() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(50, 3, 4) * (i + 1) for i in range(4)]
    q = ActQuantizer(8, sample_size=100, seed=3)
    q.observing = True
    for b in batches:
        assert torch.equal(q(b), b)  # observing only: the input passes unchanged
    everything = torch.cat([b.reshape(-1) for b in batches])
    assert float(q.min_val) == float(everything.min()) and float(q.max_val) == float(everything.max())
    assert q.count == everything.numel() and q.batches == 4
    assert q.sample.shape == (1, 100)
    assert torch.isin(q.sample, everything).all()
    again = ActQuantizer(8, sample_size=100, seed=3)
    again.observing = True
    for b in batches:
        again(b)
    assert torch.equal(again.sample, q.sample)  # same data, same seed: same sample
    # the sample is spread over all batches, not the first ones only (each batch holds 600 of 2400 values)
    last = batches[-1].reshape(-1)
    assert 10 <= int(torch.isin(q.sample, last).sum()) <= 45


def test_per_channel_statistics() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) - 5
    q = ActQuantizer(4, per_channel=True)
    q.observing = True
    q(x)
    assert q.min_val.tolist() == [-5.0, -1.0, 3.0]
    assert q.max_val.tolist() == [10.0, 14.0, 18.0]
    q.finish_calibration("minmax")
    assert q.signed is True and q.alpha.tolist() == [10.0, 14.0, 18.0]


def test_unsigned_grid_by_hand() -> None:
    q = ActQuantizer(2, signed=False)
    q.set_alpha(3.0)
    q.enabled = True
    x = torch.tensor([-1.0, 0.4, 0.6, 2.5, 7.0])
    assert q(x).tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]  # Δ = 3/3 = 1; 2.5 rounds to even


def test_signed_grid_by_hand() -> None:
    q = ActQuantizer(3, signed=True)
    q.set_alpha(3.0)
    q.enabled = True
    x = torch.tensor([-5.0, -3.6, -0.4, 1.2, 4.0])
    assert q(x).tolist() == [-4.0, -4.0, -0.0, 1.0, 3.0]  # Δ = 3/3, codes -4..3
    one = ActQuantizer(1, signed=True)
    one.set_alpha(2.0)
    one.enabled = True
    assert one(torch.tensor([-0.1, 0.3])).tolist() == [-2.0, 2.0]  # the sign grid {-α, α}


def test_signed_choice_from_calibration_data() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    qs = attach_input_quantizers(model, 4)
    calibrate(model, torch.randn(64, 4))
    for q in qs.values():
        q.finish_calibration("mse")
    assert qs["0"].signed is True  # the raw input has negative values
    assert qs["2"].signed is False  # after ReLU: the unsigned grid [0, α]
    assert qs["2"].grid_spec().scheme == "unsigned"
    assert torch.equal(qs["2"].alpha, choose_clip(qs["2"].sample, qs["2"].grid_spec(), "mse").reshape(()))


def test_enabled_without_alpha_and_empty_calibration() -> None:
    q = ActQuantizer(4)
    q.enabled = True
    with pytest.raises(QuantizationError, match="calibrate"):
        q(torch.ones(2))
    with pytest.raises(DataError, match="observed no data"):
        ActQuantizer(4).finish_calibration()
    model = nn.Sequential(nn.Linear(4, 2))
    attach_input_quantizers(model, 8)
    with pytest.raises(DataError, match="empty"):
        calibrate(model, torch.zeros(0, 4))
    with pytest.raises(ModelError, match="no activation quantizers"):
        calibrate(nn.Sequential(nn.Linear(4, 2)), torch.ones(3, 4))


def _model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 3))


def test_hooks_keys_deepcopy_and_removal() -> None:
    model = _model()
    x = torch.randn(8, 2, 6, 6)
    ref = model(x)
    keys = set(model.state_dict())
    qs = attach_input_quantizers(model, 4, selection=Selection(skip_first=True))
    assert list(qs) == ["3", "5"]
    assert set(model.state_dict()) == keys | {"3.input_quantizer.alpha", "5.input_quantizer.alpha"}
    assert getattr(model[3], ATTR) is qs["3"]
    calibrate(model, x, batch_size=3)
    for q in qs.values():
        q.finish_calibration("minmax")
    quantized = model(x)
    assert not torch.equal(quantized, ref)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), quantized)
    input_quantizers(twin)["3"].set_alpha(0.0)  # the copy's hook uses the copy's quantizer
    assert not torch.equal(twin(x), quantized) and torch.equal(model(x), quantized)
    assert remove_input_quantizers(model) == 2
    assert set(model.state_dict()) == keys and not input_quantizers(model)
    assert torch.equal(model(x), ref)


def test_state_round_trip_through_a_model_file(tmp_path) -> None:
    model = _model()
    x = torch.randn(16, 2, 6, 6)
    qs = attach_input_quantizers(model, 3, per_channel=False)
    calibrate(model, x)
    for q in qs.values():
        q.finish_calibration("lp", p=3.0)
    expected = model(x)
    meta, tensors = activation_state(model)
    assert set(meta["quantizers"]) == {"0", "3", "5"}
    assert meta["quantizers"]["3"]["signed"] is False and meta["quantizers"]["0"]["signed"] is True
    fresh = _model()
    restore_activation_state(fresh, meta, tensors)
    assert torch.equal(fresh(x), expected)
    path = tmp_path / "a.safetensors"
    learnq.save(model, path)
    loaded = learnq.load(path, _model())
    assert torch.equal(loaded(x), expected)


def test_straight_through_gradient() -> None:
    q = ActQuantizer(2, signed=False)
    q.set_alpha(3.0)
    q.enabled = True
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0] and x.grad.tolist() == [1.0, 1.0]
