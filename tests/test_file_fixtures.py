"""Model files written by an older learnq (``tests/data/``, by learnq at commit fee0b78, before issue 11 restructured
the package) still load into a freshly built network and compute what the saved model computed.

The fixtures cover every kind of entry a file had then: PTQ weights and activation input quantizers with folded
BatchNorm and bias correction (metadata keys ``folded_batchnorm`` and ``activations`` version 1), PACT and observer
activation wrappers (key ``activation_wrappers``) with STE weights, DiffQ's per-group widths and value range, the
nested layer's floor codes on weights and biases, and a tied weight quantized once (``tests/data/make_fixtures.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from fixture_models import BUILDERS

import learnq
from learnq.file_layout import same_entry
from learnq.quantized import plain_state

DATA = Path(__file__).resolve().parent / "data"
EXPECTED = safetensors.torch.load_file(str(DATA / "expected.safetensors"))


def _expected(name: str, part: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}.{part}."
    return {k[len(prefix):]: v for k, v in EXPECTED.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_old_file_loads_into_a_fresh_network_and_computes_the_same(name):
    torch.manual_seed(99)  # other initial weights than the saved model's: the file must replace every one
    model = learnq.load(DATA / f"{name}.safetensors", BUILDERS[name]())
    model.eval()
    state = plain_state(model)
    want = _expected(name, "state")
    assert sorted(state) == sorted(want)
    for key, value in want.items():  # dequantized weights, folded biases, α's: elementwise arithmetic, bit for bit
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        out = model(EXPECTED[f"{name}.input"])
    # conv/linear kernels differ between CPUs (MKL_CBWR, oneDNN ISA): float32 sums in another order, ~1e-6 relative
    torch.testing.assert_close(out, EXPECTED[f"{name}.output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_old_file_saved_again_stores_the_same_tensors(name, tmp_path):
    path = DATA / f"{name}.safetensors"
    old = learnq.load(path)
    model = learnq.load(path, BUILDERS[name]())
    learnq.save(model, tmp_path / "again.safetensors", metadata=dict(old.metadata))
    new = learnq.load(tmp_path / "again.safetensors")
    assert sorted(new.entries) == sorted(old.entries)  # the order follows the model's state dict
    for key, entry in old.entries.items():
        assert same_entry(entry, new.entries[key]), key
    again = learnq.load(tmp_path / "again.safetensors", BUILDERS[name]())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(EXPECTED[f"{name}.input"]), EXPECTED[f"{name}.output"],
                                   rtol=1e-5, atol=1e-5)  # as above: kernels differ between CPUs


@pytest.mark.parametrize("name", ["ptq_w4a8_bn", "qat_ste_pact_observer"])
def test_old_activation_keys_are_written_again_as_one_entry(name, tmp_path):
    old = learnq.load(DATA / f"{name}.safetensors").metadata
    assert ("activation_wrappers" in old) == (name == "qat_ste_pact_observer")  # the keys files had before
    assert "activations" not in old or old["activations"]["version"] == 1
    model = learnq.load(DATA / f"{name}.safetensors", BUILDERS[name]())
    learnq.save(model, tmp_path / "new.safetensors")
    meta = learnq.load(tmp_path / "new.safetensors").metadata
    assert "activation_wrappers" not in meta and meta["activations"]["version"] == 2
    wrappers, inputs = meta["activations"]["modules"], meta["activations"]["quantizers"]
    assert (set(wrappers), set(inputs)) == ((set(old["activation_wrappers"]["modules"]), set()) if "activation_wrappers"
                                            in old else (set(), set(old["activations"]["quantizers"])))
    again = learnq.load(tmp_path / "new.safetensors", BUILDERS[name]()).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(EXPECTED[f"{name}.input"]), EXPECTED[f"{name}.output"],
                                   rtol=1e-5, atol=1e-5)  # kernels differ between CPUs (see above)
