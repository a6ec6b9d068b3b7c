"""The issue-17 report helpers (benchmarks/verdicts.py, dsmm_report.py, ptq.py's tables): paired per-seed
differences computed by hand, and a cell measured on one seed saying so instead of printing a std of 0.
Nothing is trained or quantized here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dsmm_report  # noqa: E402
import ptq  # noqa: E402
import verdicts  # noqa: E402


def test_paired_differences_by_hand():
    # seeds 0, 1, 2: a - b = +0.2, -0.1, +0.0 points (3 test images of 1,000 in all); seed 3 only on one side
    a = {0: 0.950, 1: 0.940, 2: 0.960, 3: 0.5}
    b = {0: 0.948, 1: 0.941, 2: 0.960}
    row = verdicts.paired("x - y", a, b)
    # mean (0.2 - 0.1 + 0.0) / 3 = 0.0333; sample std sqrt(((0.1667)^2 + (0.1333)^2 + (0.0333)^2) / 2) = 0.1528
    assert row == "| x - y | 0: +0.2, 1: -0.1, 2: +0.0 | +0.03 ± 0.15 | 1 / 1 / 1 |"


def test_one_seed_has_no_std():
    row = verdicts.paired("x - y", {0: 0.943}, {0: 0.932})
    assert row == "| x - y | 0: +1.1 | +1.10 (1 seed: no std) | 1 / 0 / 0 |"
    assert verdicts.paired("x - y", {0: 0.9}, {1: 0.9}) == "| x - y | (no common seed) | | |"
    assert dsmm_report.cell([0.965]) == "96.5 (1 seed)"
    assert dsmm_report.cell([0.965], n_seeds=1) == "96.5"  # a one-seed table says so in its title
    assert dsmm_report.cell([0.965], n_seeds=3) == "96.5 (1 seed)"
    assert dsmm_report.cell([0.97, 0.98]) == "97.5 ± 0.7"  # std of 97, 98: 0.707
    assert ptq._acc_cell({"mean": 0.943, "std": 0.0, "n": 1}) == "94.30 (1 seed)"
    assert ptq._acc_cell({"mean": 0.9537, "std": 0.0065, "n": 3}) == "95.37 ± 0.65"


def _results(seeds_by_model):
    train = {}
    for model, seeds in seeds_by_model.items():
        for s in seeds:
            for reg in ("l2", "dsmm"):
                train[f"scratch/{model}/{reg}/seed{s}"] = {"float": 0.97}
    return {"train": train, "ptq": {}}


def test_paired_table_one_seed_and_first_trace(tmp_path):
    results = _results({"lenet": [1, 2], "mobilenetv2-small": [0]})
    results["ptq"] = {"scratch/mobilenetv2-small/l2/seed0": {"naive": {"W4A8": {"accuracy": 0.965}}},
                      "scratch/mobilenetv2-small/dsmm/seed0": {"naive": {"W4A8": {"accuracy": 0.968}}}}
    lines = dsmm_report.paired_table(results, ["mobilenetv2-small"], ["scratch"], "dsmm")
    assert "| scratch | mobilenetv2-small | naive | W4A8 | +0.3 | +0.3 (1 seed) | 1 / 0 / 0 |" in lines
    # the α plot takes each (protocol, model)'s first seed that has a trace, not one seed for all panels
    trace = [{"epoch": 0, "alpha": {"a": 1.0}, "alpha_star": {"a": 2.0}, "grad": {"a": 0.1}}]
    results["train"]["scratch/lenet/dsmm/seed2"]["alpha_trace"] = trace
    results["train"]["scratch/mobilenetv2-small/dsmm/seed0"]["alpha_trace"] = trace
    assert dsmm_report.first_trace(tmp_path, "scratch", "lenet", results) == (2, trace)
    assert dsmm_report.first_trace(tmp_path, "scratch", "mobilenetv2-small", results) == (0, trace)
    assert dsmm_report.first_trace(tmp_path, "finetune", "lenet", results) is None


def _ptq_json(tmp_path):
    """A ptq.json with two seeds of the AdaRound rows at W2A8 and one seed of adaround-fast at W4A8."""
    import json

    acc = {("adaround", 0): 0.943, ("adaround", 1): 0.950, ("adaround-fast", 0): 0.932, ("adaround-fast", 1): 0.951,
           ("lapq", 0): 0.944, ("lapq", 1): 0.955, ("mse", 0): 0.911, ("mse", 1): 0.940}
    runs = [{"network": "mnist5k", "row": row, "wbits": 2, "abits": 8, "seed": s, "accuracy": a,
             "cpu_seconds": 70.0 if row == "adaround" else 6.0, "calib_seconds": 1.0, "loss_evals": 0}
            for (row, s), a in acc.items()]
    runs.append({"network": "digits", "row": "adaround", "wbits": 2, "abits": 8, "seed": 0, "accuracy": 0.5,
                 "cpu_seconds": 1.0, "calib_seconds": 1.0, "loss_evals": 0})  # another network: not in the table
    path = tmp_path / "ptq.json"
    floats = [{"network": "mnist5k", "seed": s, "float": 0.95} for s in (0, 1)]
    path.write_text(json.dumps({"runs": runs, "floats": [*floats, {"network": "digits", "seed": 0, "float": 0.9}]}))
    return path


def test_adaround_section_by_hand(tmp_path):
    lines = verdicts.adaround_section(_ptq_json(tmp_path))
    # 10,000 iterations: 94.3, 95.0 -> mean 94.65, std |95.0 - 94.3| / sqrt(2) = 0.49
    assert "| adaround | 0,1 | 94.65 ± 0.49 |" in lines
    assert "| adaround: CPU s | | 70.0 |" in lines
    # paired 10,000 - 1,000: +1.1 and -0.1 points -> mean +0.50, std 1.2 / sqrt(2) = 0.85
    assert "| W2A8: adaround - adaround-fast | 0: +1.1, 1: -0.1 | +0.50 ± 0.85 | 1 / 0 / 1 |" in lines
    assert "| W2A8: lapq - adaround | 0: +0.1, 1: +0.5 | +0.30 ± 0.28 | 2 / 0 / 0 |" in lines
    assert not any("50.00" in line for line in lines)  # the digits run stays out of the mnist5k table


def test_adaround_sections_one_table_pair_per_network_by_hand(tmp_path):
    lines = verdicts.adaround_sections(_ptq_json(tmp_path))
    heads = [line for line in lines if line.startswith("**AdaRound, 10,000 iterations")]
    assert len(heads) == 2 and "mnist5k LeNet" in heads[0] and "digits LeNet" in heads[1]
    digits = lines[lines.index(heads[1]):]
    # digits: one 'adaround' run (seed 0, 50 %, 1.0 CPU s) and no 1,000-iteration row: empty cells, no pair
    assert "| adaround | 0 | 50.00 (1 seed) |" in digits
    assert "| adaround-fast |  |  |" in digits
    assert "| adaround: CPU s | | 1.0 |" in digits and "| adaround-fast: CPU s | |  |" in digits
    assert not any(line.startswith("| W2A8:") for line in digits)
    assert "| W2A8: adaround - adaround-fast | 0: +1.1, 1: -0.1 | +0.50 ± 0.85 | 1 / 0 / 1 |" in lines


def test_ptq_render_into_markers(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("hand text\n<!-- ptq.py: begin -->\nold table\n<!-- ptq.py: end -->\nmore hand text\n")
    ptq.render(_ptq_json(tmp_path), doc)
    text = doc.read_text()
    assert text.startswith("hand text\n<!-- ptq.py: begin -->\n**mnist5k LeNet: test accuracy (%)")
    assert text.endswith("<!-- ptq.py: end -->\nmore hand text\n") and "old table" not in text
    assert "| adaround | | | | 94.65 ± 0.49 | |" not in text  # only W2A8 was measured: one column
    assert "| adaround | 94.65 ± 0.49 |" in text


def test_weight_table_uses_the_recorded_weights_of_the_results_seeds_only():
    # seeds 0 and 1 recorded with weights, seed 2 without (its file lost): the row averages seeds 0 and 1 and says so
    def w(r, k):
        return {"mean_range": r, "mean_absmax_over_std": 3.0, "mean_kurtosis": k, "beyond_3sigma": 10.0}

    results = {"train": {"scratch/mobilenetv2-small/l2/seed0": {"float": 0.97, "weights": w(1.0, 2.0)},
                         "scratch/mobilenetv2-small/l2/seed1": {"float": 0.97, "weights": w(2.0, 4.0)},
                         "scratch/mobilenetv2-small/l2/seed2": {"float": 0.97}}, "ptq": {}}
    lines = dsmm_report.weight_table(["mobilenetv2-small"], ["scratch"], results)
    assert lines[2] == "| scratch | mobilenetv2-small | l2 | 0, 1 | 1.5 | 3.00 | 3.00 | 10 |"
    assert dsmm_report.weight_table(["lenet"], ["scratch"], results) == [
        "(no training's weights are recorded in the results JSON)"]


def test_weight_table_reads_the_json_never_the_file_and_backfill_checks_the_file(tmp_path):
    # weight_summary by hand: one 3x4 layer with weights 0..11 / 11 -> range 1, max|w| / std = 1 / std(0..11 / 11)
    import json
    import statistics

    import dsmm_repro
    import torch
    from torch import nn

    from learnq.checkpoint import save

    net = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(12.0).reshape(3, 4) / 11)
    path = tmp_path / "scratch" / "lenet" / "l2" / "seed1.safetensors"
    path.parent.mkdir(parents=True)
    save(net, path)
    w = dsmm_report.weight_summary({"0.weight": net[0].weight.detach(), "0.bias": net[0].bias.detach()})
    values = [i / 11 for i in range(12)]
    assert w["mean_range"] == pytest.approx(1.0)
    assert w["mean_absmax_over_std"] == pytest.approx(1.0 / statistics.pstdev(values), rel=0.1)  # std's ddof
    kept = {"mean_range": 7.0, "mean_absmax_over_std": 2.0, "mean_kurtosis": 3.0, "beyond_3sigma": 5.0}
    results = {"train": {"scratch/lenet/l2/seed1": {"float": 0.9, "weights": kept},
                         "scratch/lenet/dsmm/seed1": {"float": 0.9}}, "ptq": {}}
    lines = dsmm_report.weight_table(["lenet"], ["scratch"], results)
    assert lines[2] == "| scratch | lenet | l2 | 1 | 7 | 2.00 | 3.00 | 5 |"  # the JSON's, not the file's range 1
    assert len(lines) == 3  # no dsmm weights recorded: no row
    del results["train"]["scratch/lenet/l2/seed1"]["weights"]  # the file alone (maybe another training) never counts
    assert len(dsmm_report.weight_table(["lenet"], ["scratch"], results)) == 1
    # backfill: a file whose JSON has another float accuracy is not the recorded training
    recipe = {"version": 1}
    path.with_suffix(".json").write_text(json.dumps({"float": 0.8, "recipe": recipe, "train_seconds": 1.0}))
    entry = {"key": "scratch/lenet/l2/seed1", "float": 0.9, "recipe": recipe, "train_seconds": 2.0}
    assert not dsmm_repro.backfill_weights(entry, path) and "weights" not in entry
    path.with_suffix(".json").write_text(json.dumps({"float": 0.9, "recipe": recipe, "train_seconds": 1.0}))
    assert dsmm_repro.backfill_weights(entry, path)
    assert entry["weights"]["mean_range"] == pytest.approx(1.0) and "retraining" in entry["weights_from"]
    # a DSMM entry also needs the recorded α trace: same recipe and float, α differing from epoch 1 on is another
    # training (as the retrained LeNets of the fifth session, BENCHMARKS.md issue 17)
    trace = [{"epoch": 0, "alpha": {"0": 0.1}}, {"epoch": 1, "alpha": {"0": 4.5867862}}]
    dsmm = {"key": "scratch/lenet/dsmm/seed1", "float": 0.9, "recipe": recipe, "train_seconds": 2.0,
            "alpha_trace": trace}
    other = [trace[0], {"epoch": 1, "alpha": {"0": 4.5867858}}]
    side = {"float": 0.9, "recipe": recipe, "train_seconds": 1.0,
            "training": {"regularizers": {"dsmm": {"trace": other}}}}
    path.with_suffix(".json").write_text(json.dumps(side))
    assert not dsmm_repro.backfill_weights(dsmm, path) and "weights" not in dsmm
    side["training"]["regularizers"]["dsmm"]["trace"] = trace
    path.with_suffix(".json").write_text(json.dumps(side))
    assert dsmm_repro.backfill_weights(dsmm, path) and dsmm["weights"]["mean_range"] == pytest.approx(1.0)
    # and, given the file's min-max PTQ (here a stand-in), every recorded naive accuracy: an L2 entry's same
    # recipe and float with another naive W2A8 (0.106 against 0.127, as a retrained LeNet) is another training
    ptq = {"naive": {"W4A8": {"accuracy": 0.978}, "W2A8": {"accuracy": 0.127}}, "mse": {"W2A8": {"accuracy": 0.5}}}
    l2 = {"key": "scratch/lenet/l2/seed1", "float": 0.9, "recipe": recipe, "train_seconds": 2.0}
    path.with_suffix(".json").write_text(json.dumps({"float": 0.9, "recipe": recipe, "train_seconds": 1.0}))
    asked = []
    assert not dsmm_repro.backfill_weights(l2, path, ptq, lambda w, a: asked.append((w, a)) or
                                           {4: 0.978, 2: 0.106}[w])
    assert "weights" not in l2 and asked == [(2, 8)]  # "W2A8" sorts first; the mismatch stops there
    assert dsmm_repro.backfill_weights(l2, path, ptq, lambda w, a: {4: 0.978, 2: 0.127}[w]) and "weights" in l2


def test_retrain_check_counts_a_chance_float_match_as_not_reproduced():
    import dsmm_retrain_check

    recipe = {"version": 1}
    trace = [{"epoch": 0, "alpha": {"a": 0.1}}, {"epoch": 1, "alpha": {"a": 4.0}}, {"epoch": 2, "alpha": {"a": 3.0}}]
    recorded = {"train": {"s/lenet/l2/seed1": {"float": 0.977, "recipe": recipe},
                          "s/lenet/dsmm/seed1": {"float": 0.976, "recipe": recipe, "alpha_trace": trace}},
                "ptq": {"s/lenet/l2/seed1": {"naive": {"W4A8": {"accuracy": 0.978}, "W2A8": {"accuracy": 0.127}}},
                        "s/lenet/dsmm/seed1": {"naive": {"W4A8": {"accuracy": 0.974}}}}}
    other = [trace[0], trace[1], {"epoch": 2, "alpha": {"a": 3.1}}]
    retrained = {"train": {"s/lenet/l2/seed1": {"float": 0.977, "recipe": recipe},
                           "s/lenet/dsmm/seed1": {"float": 0.976, "recipe": recipe, "alpha_trace": other}},
                 "ptq": {"s/lenet/l2/seed1": {"naive": {"W4A8": {"accuracy": 0.978}, "W2A8": {"accuracy": 0.106}}}}}
    lines, counts = dsmm_retrain_check.compare(recorded, retrained)
    assert counts == {"models": 2, "same recipe": 2, "same float": 2, "same float and naive PTQ and α": 0}
    assert lines[2] == "| s/lenet/dsmm/seed1 | 0.976 | 0.976 | yes |  | 2 |"
    assert lines[3] == "| s/lenet/l2/seed1 | 0.977 | 0.977 | yes | W2A8 0.127 / 0.106, W4A8 0.978 / 0.978 |  |"
    retrained["ptq"]["s/lenet/l2/seed1"]["naive"]["W2A8"]["accuracy"] = 0.127
    assert dsmm_retrain_check.compare(recorded, retrained)[1]["same float and naive PTQ and α"] == 1
