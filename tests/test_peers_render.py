"""The peers benchmark's render step (benchmarks/peer_runs/render.py): results JSON -> the README.md and
BENCHMARKS.md tables, and the artifact inspection behind its "low-bit codes" column (peer_runs/common.py).
No peer library is run here."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from peer_runs import render  # noqa: E402
from peer_runs.common import Tensor, layer_storage, verdict  # noqa: E402


def _row(library, method, setting, seed, **kw):
    row = {"library": library, "method": method, "setting": setting, "seed": seed, "status": "ok", "acc": None,
           "acc_artifact": None, "reload_diff": 0.0, "seconds": [], "mse_seconds": [], "ratio": None, "bytes": None,
           "artifact": "a", "stores": "", "layers": {}, "low_bit": "", "note": "", "error": "", "extra": {}}
    row.update(kw)
    return row


def _payload():
    layers = {"features.conv1": {"dtype": "uint8 (4-bit packed)", "stored_bits": 4.0, "code_bits": 4, "numel": 150}}
    return {
        "command": "python benchmarks/peers.py", "seeds": [0, 1], "threads": 1, "options": {"rounds": 3},
        "load_average": {"start": [1.0, 2.0, 3.0]}, "wall_seconds": 120.0,
        "versions": {"learnq": {"version": "0.1.0", "torch": "2.13.0+cpu"}},
        "float": {"accuracy": [0.97, 0.99], "bytes": 247680},
        "rows": [
            _row("learnq", "mse", "W4A8", 0, acc=0.95, acc_artifact=0.95, seconds=[1.0, 3.0, 2.0],
                 mse_seconds=[2.0, 2.0, 2.0], ratio=1.0, bytes=33491, low_bit="yes: 4.00 bits/weight", layers=layers),
            _row("learnq", "mse", "W4A8", 1, acc=0.97, acc_artifact=0.97, seconds=[1.0], mse_seconds=[2.0],
                 ratio=0.5, bytes=33491, low_bit="yes: 4.00 bits/weight", layers=layers),
            _row("learnq", "gptq", "W4A8", 0, status="pending", note="learnq.ptq has no 'gptq' method yet"),
            _row("nncf", "quantize", "W4A8", 0, status="not supported", error="ValueError: HW config"),
            _row("torchao", "int8_weight_only", "W8A32", 0, acc=0.9, acc_artifact=0.9, reload_diff=0.25,
                 seconds=[0.2], mse_seconds=[0.4], ratio=0.5, bytes=77689,
                 low_bit="yes: 8.00 bits/weight; float: conv1, conv2", layers=layers),
        ],
    }


def test_summarize_aggregates_over_seeds():
    entries = {(e["library"], e["method"], e["setting"]): e for e in render.summarize(_payload())}
    mse = entries[("learnq", "mse", "W4A8")]
    assert mse["n"] == 2 and mse["seeds"] == [0, 1]
    assert mse["acc"] == pytest.approx(0.96)
    assert mse["acc_std"] == pytest.approx(statistics.stdev([0.95, 0.97]))
    assert mse["ratio"] == pytest.approx(0.75)  # median of the per-seed ratios 1.0 and 0.5
    assert mse["seconds"] == pytest.approx(1.5)  # median over seeds of each seed's median (2.0, 1.0)
    assert entries[("learnq", "gptq", "W4A8")]["status"] == "pending"
    assert entries[("nncf", "quantize", "W4A8")]["reason"] == "ValueError: HW config"


def test_readme_block_lines():
    text = render.readme_block(_payload())
    lines = text.splitlines()
    assert "| float32 | the float LeNet (safetensors state dict) | 98.00 ± 1.41 | - | 247.7 | no: float32 weights |" \
        in lines
    assert "| W4A8 | learnq MSE | 96.00 ± 1.41 | 0.75x | 33.5 | yes: 4.00 bits/weight |" in lines
    assert "| W4A8 | learnq GPTQ | pending (issue 15) | | | |" in lines
    assert "| W8 weight-only | torchao Int8WeightOnlyConfig | 90.00 | 0.5x | 77.7 | yes: 8.00 bits/weight; float: " \
           "conv1, conv2 |" in lines
    assert not any("nncf.quantize" in line for line in lines if line.startswith("|"))  # refused: listed below
    assert "NNCF nncf.quantize W4A8" in lines[-1]
    # settings appear in the plan's order: W4A8 rows before weight-only rows
    assert lines.index("| W4A8 | learnq MSE | 96.00 ± 1.41 | 0.75x | 33.5 | yes: 4.00 bits/weight |") < next(
        i for i, line in enumerate(lines) if line.startswith("| W8 weight-only"))


def test_benchmarks_block_has_detail_and_reasons():
    text = render.benchmarks_block(_payload())
    assert "| W4A8 | learnq | MSE | 96.00 ± 1.41 | 96.00 | 0 | 1.50 | 0.75x | 33491 | conv1 uint8 (4-bit packed) 4b " \
           "| a |" in text
    assert "- NNCF nncf.quantize, W4A8: ValueError: HW config" in text
    assert "load average (1/5/15 min) start 1.0 / 2.0 / 3.0" in text


def test_replace_block_rewrites_only_between_markers():
    text = f"head\n{render.BEGIN}\nold\n{render.END}\ntail\n"
    new = render.replace_block(text, "new 1\nnew 2", "x.md")
    assert new == f"head\n{render.BEGIN}\nnew 1\nnew 2\n{render.END}\ntail\n"
    assert render.current_block(new) == "new 1\nnew 2"
    with pytest.raises(ValueError, match="markers"):
        render.replace_block("no markers here", "x", "x.md")


@pytest.mark.parametrize("path", ["README.md", "benchmarks/BENCHMARKS.md"])
def test_committed_blocks_match_the_results_json(path):
    """README.md and BENCHMARKS.md hold exactly what the render step makes of benchmarks/results/peers.json."""
    payload = json.loads((ROOT / "benchmarks" / "results" / "peers.json").read_text())
    block = render.readme_block(payload) if path == "README.md" else render.benchmarks_block(payload)
    assert render.current_block((ROOT / path).read_text()) == block


def test_layer_storage_and_verdict():
    numels = {"features.conv1": 150, "classifier.fc1": 48000}
    packed = [Tensor("c1", "uint8", 75, 75), Tensor("f1", "uint8", 24000, 24000)]  # 4-bit codes, two a byte
    layers = layer_storage(packed, numels)
    assert layers["features.conv1"]["code_bits"] == 4 and layers["features.conv1"]["stored_bits"] == 4.0
    assert verdict(layers, 4) == "yes: 4.00 bits/weight"
    # 4-bit codes one per int8 byte (Brevitas' QCDQ): the range says 4 bits, the storage 8
    int8 = [Tensor("c1", "int8", 150, 150, -8, 7), Tensor("f1", "int8", 48000, 48000, -8, 7)]
    assert verdict(layer_storage(int8, numels), 4) == "4-bit codes, 8.00 bits/weight stored"
    # int8 codes plus the float weights left beside them (torchao PT2E); a float-only layer is named
    mixed = [Tensor("c1", "float32", 150, 600), Tensor("f1", "int8", 48000, 48000, -127, 127),
             Tensor("f1_float", "float32", 48000, 192000)]
    assert verdict(layer_storage(mixed, numels), 8) == "yes: 8.00 bits/weight; float: conv1; float copy kept"
    assert verdict(layer_storage([Tensor("c1", "float32", 150, 600), Tensor("f1", "float32", 48000, 192000)],
                                 numels), 8) == "no: float32 weights"
    # 2-bit codes of 150 weights take 38 bytes (whole bytes): still "at 2 bits"
    two = layer_storage([Tensor("c1", "uint8", 38, 38), Tensor("f1", "uint8", 12000, 12000)], numels)
    assert two["features.conv1"]["code_bits"] == 2
    bits = (38 * 8 + 12000 * 8) / 48150
    assert verdict(two, 2) == f"yes: {bits:.2f} bits/weight" and math.isclose(bits, 2.0, abs_tol=0.01)


def test_layer_storage_named_packing_with_padding_and_partial_verdict():
    numels = {"features.conv1": 150, "classifier.fc1": 48000}
    # quanto packs 2-bit codes per row (6 rows of 25 -> 2 rows: 50 bytes, not ceil(150*2/8) = 38): found by name
    quanto = [Tensor("features.conv1.weight._data", "uint8", 50, 50, 0, 255),
              Tensor("features.conv1.weight._scale", "float32", 6, 24),
              Tensor("classifier.fc1.weight._data", "uint8", 12000, 12000, 0, 255)]
    layers = layer_storage(quanto, numels)
    assert layers["features.conv1"]["code_bits"] == 2
    assert layers["features.conv1"]["stored_bits"] == pytest.approx(50 * 8 / 150)
    assert verdict(layers, 2) == f"yes: {(50 + 12000) * 8 / 48150:.2f} bits/weight"  # padding is not a wider type
    # NNCF INT4 with 8-bit backup for the convolution: one layer in a wider container
    nncf = [Tensor("features.conv1.weight", "int8", 150, 150, -127, 127),
            Tensor("classifier.fc1.weight", "uint8", 24000, 24000, 0, 255)]
    assert verdict(layer_storage(nncf, numels), 4) == (
        f"partly: conv1 8-bit codes in 8 bits; {(150 * 8 + 24000 * 8) / 48150:.2f} bits/weight")
