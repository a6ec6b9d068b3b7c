"""benchmarks/dsmm_ptq_table1.py (issue 15) reuses the issue-17 reproduction's float models
(benchmarks/dsmm_repro.py): the two benchmarks' recipes must train the same networks (DSMM's α learning rate aside),
and the table's ``model_file`` must find the reproduction's file under its own spelling of heavy L2. Nothing is
trained or quantized here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dsmm_ptq_table1 as table1  # noqa: E402
import dsmm_repro as repro  # noqa: E402

from learnq.pipeline.models import model_from_spec, model_spec  # noqa: E402
from learnq.pipeline.recipe import Recipe  # noqa: E402
from learnq.regularizers import L2, build_regularizer  # noqa: E402

REG_NAMES = {"l2": "l2", "heavy-l2": "l2-heavy", "dsmm": "dsmm"}  # table1's name -> the reproduction's


def _effective(recipe: Recipe) -> list[tuple[str, float, float | None]]:
    """Each regularizer as built by training: (loss family, effective strength, DSMM α₀), L2Heavy counted as L2."""
    net = model_from_spec(model_spec("lenet", (1, 28, 28), 10), device="cpu")
    out = []
    for section in recipe.regularizers:
        reg = build_regularizer(section.name, net, strength=section.strength, **section.options)
        family = "l2" if isinstance(reg, L2) else section.name
        out.append((family, reg.strength, getattr(reg, "alpha_init", None)))
    return out


@pytest.mark.parametrize("model", ["lenet", "mobilenetv2-small"])
@pytest.mark.parametrize("reg", ["l2", "heavy-l2", "dsmm"])
def test_table1_recipe_is_the_reproductions(model, reg):
    mine = Recipe.from_dict(table1.recipe_dict(model, reg, 2))
    theirs = repro.make_recipe("scratch", model, REG_NAMES[reg], 2, repro.parse_args(["--seeds", "2"]))
    a, b = mine.to_dict(), theirs.to_dict()
    for field in ("seed", "data", "model", "train"):
        assert a[field] == b[field], field
    got, want = _effective(mine), _effective(theirs)
    assert [g[0] for g in got] == [w[0] for w in want]
    # same product of the same two floats (10 x the 1x strength) on both sides: equal up to one rounding
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-12)
    assert [g[2] for g in got] == [w[2] for w in want]
    if reg == "heavy-l2":
        assert got[0][1] == pytest.approx(10 * table1.TRAIN[model]["l2"], rel=1e-12)
    if reg == "dsmm":  # the one recorded difference: α's learning rate (5 in the table's pilot, 50 reproduced)
        assert mine.regularizers[1].options["alpha_lr"] == 5.0
        assert theirs.regularizers[1].options["alpha_lr"] == 50.0


def test_model_file_falls_back_to_the_reproduction(tmp_path, monkeypatch):
    monkeypatch.setattr(table1, "PILOT", tmp_path / "pilot")
    monkeypatch.setattr(table1, "CACHE", tmp_path / "i15")
    monkeypatch.setattr(table1, "REPRO", tmp_path / "repro")
    model = "mobilenetv2-small"
    theirs = tmp_path / "repro" / model / "l2-heavy" / "seed2.safetensors"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"")
    assert table1.model_file(model, "heavy-l2", 2) == theirs  # the reproduction's spelling of heavy L2
    own = tmp_path / "i15" / model / "heavy-l2" / "seed2" / table1.MODEL_FILE
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    assert table1.model_file(model, "heavy-l2", 2) == own  # the table's own model wins where it exists
    pilot = tmp_path / "pilot" / model / "heavy-l2" / "seed2.safetensors"
    pilot.parent.mkdir(parents=True)
    pilot.write_bytes(b"")
    assert table1.model_file(model, "heavy-l2", 2) == pilot


def test_paired_differences_by_hand():
    # seeds 0 and 2 have both runs, seed 1 only the DSMM one: dsmm - l2 = +0.3, -0.2 points
    runs = {"mobilenetv2-small/dsmm/0/W4A8/naive": {"accuracy": 0.970},
            "mobilenetv2-small/l2/0/W4A8/naive": {"accuracy": 0.967},
            "mobilenetv2-small/dsmm/1/W4A8/naive": {"accuracy": 0.950},
            "mobilenetv2-small/dsmm/2/W4A8/naive": {"accuracy": 0.973},
            "mobilenetv2-small/l2/2/W4A8/naive": {"accuracy": 0.975}}
    got = table1.paired(runs, "mobilenetv2-small", "dsmm", "W4A8", "naive")
    assert [sd for sd, _ in got] == ["0", "2"]
    # 100 x a difference of two 3-decimal accuracies: exact to well below the 0.1 point printed
    assert [v for _, v in got] == pytest.approx([0.3, -0.2], abs=1e-9)
