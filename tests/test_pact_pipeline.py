"""PACT (Choi et al. 2018, Eq. 1-3; learnq.act) through the pipeline (learnq.pipeline.qat_variants): activation
bits in QAT variants (``abits``) and ``[qat]`` tables (``options.abits``), ``options.act_method``, the validation naming
the key, rows reporting abits, reloaded files computing exactly what the trained model computed; and DDP with two
gloo processes ending with identical weights and clips."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ddp_util import spawn_ranks
from recipe_util import tiny_recipe
from torch import nn

import learnq
import learnq.checkpoint as ckpt
from learnq.act import ACTIVATIONS_KEY, PACT, QuantizedActivation, insert_activation_quantizers
from learnq.errors import ConfigError
from learnq.pipeline.model_files import evaluate_file, rebuild
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.run import run_recipe

BASE = tiny_recipe("tiny-pact", seed=3, limit=240, hidden=(16,), epochs=2, batch_size=32, lr=0.01)

ROWS = """
[[variants]]
method = "float"

[[variants]]
method = "ste"
bits = 4
abits = 4
options = { epochs = 1, batch_size = 32, act_method = "pact" }

[[variants]]
method = "lsq"
bits = 4
abits = 6
options = { epochs = 1, batch_size = 32, act_method = "observer" }
"""


@pytest.mark.parametrize(("text", "message"), [
    ('[[variants]]\nmethod = "ste"\nbits = 4\nabits = 0\n', r"variants\[0\]\.abits"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\nabits = 4\noptions = { act_method = "lsq" }\n',
     r"variants\[0\]\.options\.act_method: unknown activation quantizer 'lsq'"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\noptions = { act_method = "pact" }\n',
     r"variants\[0\]\.options\.act_method: activation bits are missing; give abits"),
    ('[qat]\nmethod = "ste"\nbits = 4\noptions = { abits = 17 }\n', r"qat\.options\.abits"),
    ('[qat]\nmethod = "ste"\nbits = 4\noptions = { abits = "4" }\n', r"qat\.options\.abits"),
    ('[qat]\nmethod = "lsq"\nbits = 4\noptions = { act_method = "observer" }\n',
     r"qat\.options\.act_method: activation bits are missing; give options\.abits"),
])
def test_activation_options_are_validated_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(BASE + text)


def test_labels_and_defaults():
    recipe = parse_recipe(BASE + ROWS)
    assert [v.label for v in recipe.variants] == ["float", "ste-w4a4", "lsq-w4a6"]
    assert parse_recipe(BASE + '[[variants]]\nmethod = "ste"\nbits = 4\n').variants[0].options["act_method"] is None


def test_variant_rows_report_abits_and_reload_exactly(tmp_path):
    result = run_recipe(parse_recipe(BASE + ROWS), tmp_path)
    by = {r["method"]: r for r in result.rows}
    assert [(by[m]["bits"], by[m]["abits"]) for m in ("float", "ste", "lsq")] == [(32, 32), (4, 4), (4, 6)]
    for row, detail in zip(result.rows, result.details, strict=True):
        assert detail["accuracy_before_save"] == row["accuracy"]  # reloaded file == fine-tuned model in memory
        again = evaluate_file(tmp_path / row["file"])
        assert (again["accuracy"], again["abits"]) == (row["accuracy"], row["abits"])
    pact_file = ckpt.read(tmp_path / by["ste"]["file"])
    wrappers = pact_file.metadata[ACTIVATIONS_KEY]["modules"]
    assert list(wrappers) == ["relu1"] and wrappers["relu1"]["method"] == "pact" and wrappers["relu1"]["bits"] == 4
    assert pact_file.entries["relu1.1.clip"].item() == wrappers["relu1"]["clip"]
    obs = ckpt.read(tmp_path / by["lsq"]["file"]).metadata[ACTIVATIONS_KEY]["modules"]["relu1"]
    assert obs["method"] == "observer" and obs["observed"] is True and obs["range"][1] > 0
    model, splits, _ = rebuild(tmp_path / by["ste"]["file"])
    assert isinstance(model.relu1, QuantizedActivation) and isinstance(model.relu1.quantizer, PACT)
    with torch.no_grad():
        hidden = model.relu1(model.fc1(model.flatten(splits.test.tensors[0][:32])))
    levels = hidden / (model.relu1.quantizer.clip / 15)
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # the hidden activations lie on PACT's 4-bit grid


def test_qat_table_trains_with_pact(tmp_path):
    text = BASE + '[qat]\nmethod = "ste"\nbits = 4\noptions = { abits = 3 }\n'
    result = run_recipe(parse_recipe(text), tmp_path)
    row = result.rows[0]
    assert row["abits"] == 3
    assert row["accuracy"] == result.test["accuracy"]  # the reloaded file == the trained model in memory
    assert (evaluate_file(tmp_path)["accuracy"], evaluate_file(tmp_path)["abits"]) == (row["accuracy"], 3)
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["qat"]["abits"] == 3
    model, _, _ = rebuild(tmp_path)
    assert isinstance(model.relu1.quantizer, PACT) and model.relu1.quantizer.bits == 3


# -- DDP ------------------------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU6(), nn.Linear(8, 3))
        insert_activation_quantizers(model, bits=3, init_clip=0.5)
        handle = learnq.prepare(model, learnq.STE(bits=4))
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(16, 6, generator=torch.Generator().manual_seed(rank)) * 2  # different data per process
        y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(10 + rank))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            (nn.functional.cross_entropy(ddp(x), y) + handle.loss()).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            state = {k: v.clone() for k, v in model.state_dict().items()}
            torch.save({"state": state, "out": model(torch.ones(2, 6))}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_end_with_identical_weights_and_clips():
    r0, r1 = spawn_ranks(_ddp_worker)
    assert r0["state"].keys() == r1["state"].keys()
    clips = [k for k in r0["state"] if k.endswith(".clip")]
    assert clips == ["1.1.clip", "3.1.clip"]
    assert any(r0["state"][k].item() != 0.5 for k in clips)  # the clips were trained (gradients were all-reduced)
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert torch.equal(r0["out"], r1["out"])

