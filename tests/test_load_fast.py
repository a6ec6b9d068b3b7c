"""Loading without re-tracing and straight into the parameters (issue 12): the same model, bit for bit, as the
slower path computed (the old files of tests/data and their expected states are the reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixture_models import BUILDERS, ConvBN
from torch import nn

import learnq
from learnq.errors import CheckpointError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, QuantParams, dequantize, quantize_tensor

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_dequantize_into_a_tensor_is_bit_identical(gran):
    w = torch.randn(33, 7, generator=torch.Generator().manual_seed(0)) * 3
    qt = quantize_tensor(w, GridSpec(bits=5, scheme="affine", granularity=gran))
    out = torch.empty(33, 7)
    got = qt.dequantize(out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, qt.dequantize())  # the same elementwise operations, in place


def test_dequantize_into_ignores_a_tensor_it_cannot_use():
    codes = torch.tensor([[1, -2], [3, 4]], dtype=torch.int32)
    params = QuantParams(scale=torch.tensor([0.5, 0.25]), offset=torch.tensor([0.0, 1.0]))
    out16 = torch.empty(2, 2, dtype=torch.float16)
    got = dequantize(codes, Granularity.parse("channel"), params, torch.float32, out=out16)
    assert got.dtype == torch.float32 and torch.equal(got, torch.tensor([[0.5, -1.0], [1.75, 2.0]]))


def test_load_folds_the_recorded_batchnorm_without_tracing(monkeypatch):
    def no_trace(*args, **kwargs):
        raise AssertionError("load traced the model")

    monkeypatch.setattr(torch.fx.Tracer, "trace", no_trace)
    model = learnq.load(DATA / "ptq_w4a8_bn.safetensors", ConvBN())
    assert isinstance(model.features[1], nn.Identity) and isinstance(model.features[4], nn.Identity)


def test_load_refuses_recorded_pairs_that_do_not_fold():
    class Other(ConvBN):  # the same names, but the second BatchNorm has other channels than its conv
        def __init__(self) -> None:
            super().__init__()
            self.features[4] = nn.BatchNorm2d(5)

    with pytest.raises(CheckpointError, match="not .*pairs that fold"):
        learnq.load(DATA / "ptq_w4a8_bn.safetensors", Other())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_loaded_weight_is_one_copy_and_writes_are_seen(name):
    model = learnq.load(DATA / f"{name}.safetensors", BUILDERS[name]()).eval()
    from torch.nn.utils import parametrize

    seen = set()  # a tied weight: one parameter under several holders, written once below
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            qw = plist[-1]
            value = getattr(module, attr)
            assert torch.equal(value, qw.quantized().dequantize())  # what the codes say, bit for bit
            if len(plist) == 1 and value.dtype == torch.float32 and id(plist.original) not in seen:
                seen.add(id(plist.original))
                assert value.data_ptr() == plist.original.data_ptr()  # the parameter's storage, no second copy
                with torch.no_grad():
                    plist.original.add_(1.0)  # a write into the parameter: the cache recomputes from the codes
                assert torch.equal(getattr(module, attr), qw.quantized().dequantize())
