"""Tied weights through PTQ and the model file: one Parameter held by several modules is one quantized tensor (one
grid, one code tensor, one quantizer module on every holder), as in QAT, or stays in float in every holder with a
reason; it is never split. Reloading reproduces the outputs bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import learnq
from learnq.attach import Selection
from learnq.errors import CheckpointError
from learnq.grid import GridSpec, quantize_tensor
from learnq.ptq import attach_weight_quantizers, quantize, quantize_weights
from learnq.quantized import quantized_parameters


class TiedLM(nn.Module):
    """An Embedding(50, 16) whose weight is also the output Linear(16, 50, bias=False)'s weight."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(50, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(tokens))))


class TiedPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dec(torch.relu(self.enc(x)))))


def _tokens(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (n, 6), generator=torch.Generator().manual_seed(seed))


def _one_quantizer(model: TiedLM) -> nn.Module:
    """The quantizer every holder of the tied weight computes with (fails if the holders differ)."""
    q_emb = model.emb.parametrizations.weight[-1]
    q_out = model.out.parametrizations.weight[-1]
    assert q_emb is q_out, "the tied weight was split into two quantizers"
    assert torch.equal(model.emb.weight, model.out.weight)
    return q_emb


@pytest.mark.parametrize(("method", "options"), [("mse", {}), ("minmax", {}), ("adaround", {"iterations": 20})])
def test_ptq_quantizes_a_tied_weight_once_and_reloads_bit_exact(method, options, tmp_path):
    model = TiedLM()
    x = _tokens()
    result = quantize(model, x, method=method, wbits=4, abits=8, progress=False, **options)
    q = _one_quantizer(result.model)
    qt = q.export_quantized(result.model.emb.parametrizations.weight.original)
    assert torch.equal(result.model.emb.weight, qt.dequantize())  # the Embedding looks up the 4-bit weight
    assert not any(s.startswith("emb ") for s in result.skipped), result.skipped  # not reported as float
    assert torch.equal(model.emb.weight, model.out.weight)  # the caller's model untouched and still tied
    exported = dict(quantized_parameters(result.model))
    assert set(exported) == {"emb.weight", "mid.weight", "out.weight"}
    with torch.no_grad():
        expected = result.model(x)
    learnq.save(result.model, tmp_path / "m.safetensors")
    fresh = TiedLM(seed=5)
    learnq.load(tmp_path / "m.safetensors", fresh)
    fresh.eval()
    _one_quantizer(fresh)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_weight_only_helpers_quantize_every_holder_of_a_tied_weight():
    x = _tokens()
    for attach in (lambda m: quantize_weights(m, GridSpec(bits=4)),
                   lambda m: attach_weight_quantizers(m, GridSpec(bits=4), clip="mse")):
        model = TiedLM()
        done = attach(model)
        assert set(done) == {"mid.weight", "out.weight"}  # each Parameter once
        _one_quantizer(model)
        with torch.no_grad():
            model(x)
    pair = TiedPair()
    done = attach_weight_quantizers(pair, GridSpec(bits=4))
    assert set(done) == {"enc.weight", "head.weight"}  # dec.weight is enc.weight: quantized with it, not twice
    assert pair.enc.parametrizations.weight[-1] is pair.dec.parametrizations.weight[-1]


def test_a_tie_with_a_holder_the_selection_leaves_in_float_stays_float_everywhere():
    model = TiedPair()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    result = quantize(model, x, method="mse", wbits=4, abits=8, selection=Selection(exclude=("enc.*",)),
                      progress=False)
    assert set(dict(quantized_parameters(result.model))) == {"head.weight"}
    assert torch.equal(result.model.enc.weight, model.enc.weight)
    assert torch.equal(result.model.dec.weight, model.enc.weight)
    assert any(s.startswith("dec ") and "tied" in s and "enc.weight" in s for s in result.skipped), result.skipped


def test_loading_split_values_into_a_tied_parameter_is_refused(tmp_path):
    model = TiedLM()
    qt = quantize_tensor(model.out.weight.detach(), GridSpec(bits=4), name="out.weight")
    learnq.save(model, tmp_path / "split.safetensors", quantized={"out.weight": qt})  # emb float, out 4-bit
    with pytest.raises(CheckpointError, match=r"'emb.weight' and 'out.weight' are one tied parameter"):
        learnq.load(tmp_path / "split.safetensors", TiedLM(seed=3))
    untied = TiedLM(seed=3)
    untied.out.weight = nn.Parameter(untied.out.weight.detach().clone())  # two Parameters: both values load
    learnq.load(tmp_path / "split.safetensors", untied)
    assert torch.equal(untied.emb.weight, model.emb.weight)
    assert torch.equal(untied.out.weight, qt.dequantize())
