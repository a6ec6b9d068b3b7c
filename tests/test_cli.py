"""The ``learnq`` commands run/train/eval/list: JSON output, --seed, exit status 2 with one line on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from recipe_util import tiny_recipe

import learnq.checkpoint as ckpt
from learnq.cli import main
from learnq.pipeline.data import DATASETS
from learnq.pipeline.models import MODELS
from learnq.pipeline.registry import VARIANTS
from learnq.pipeline.run import ROW_KEYS

TINY = tiny_recipe(tables='[[variants]]\nmethod = "float"\n\n[[variants]]\nmethod = "minmax"\nbits = 4\n')


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_run_json_and_same_seed_same_result(recipe_file, tmp_path, capsys):
    first = _json(capsys, ["run", str(recipe_file), "--out", str(tmp_path / "a"), "--seed", "3", "--json"])
    assert set(first) == {"rows", "out"} and first["out"] == str(tmp_path / "a")
    assert [tuple(r) for r in first["rows"]] == [ROW_KEYS] * 2
    assert [(r["method"], r["bits"]) for r in first["rows"]] == [("float", 32), ("minmax", 4)]
    second = _json(capsys, ["run", str(recipe_file), "--out", str(tmp_path / "b"), "--seed", "3", "--json"])
    assert second["rows"] == first["rows"]
    meta = ckpt.read(tmp_path / "b" / "model.safetensors").metadata
    assert (meta["recipe"]["seed"], meta["recipe"]["train"]["seed"], meta["data"]["seed"]) == (3, 3, 3)
    assert (tmp_path / "b" / "report.md").is_file() and not (tmp_path / "b" / "training.png").exists()


def test_train_then_eval_reproduces_the_test_accuracy(recipe_file, tmp_path, capsys):
    out = tmp_path / "t"
    trained = _json(capsys, ["train", str(recipe_file), "--out", str(out), "--json"])
    assert trained["model"] == str(out / "model.safetensors") and len(trained["history"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert "rows" not in metrics and metrics["test"] == trained["test"]
    assert not (out / "report.md").exists()
    evaluated = _json(capsys, ["eval", str(out), "--json"])
    assert evaluated["accuracy"] == metrics["test"]["accuracy"] and evaluated["loss"] == metrics["test"]["loss"]
    assert (evaluated["method"], evaluated["bits"], evaluated["model"], evaluated["data"]) == ("float", 32, "mlp",
                                                                                             "digits")
    assert main(["eval", str(out / "model.safetensors")]) == 0
    text = capsys.readouterr().out
    assert f"test accuracy {100 * metrics['test']['accuracy']:.2f}%" in text


@pytest.mark.parametrize("kind", ["models", "datasets", "methods", "recipes"])
def test_list_json(kind, capsys):
    listed = _json(capsys, ["list", kind, "--json"])[kind]
    names = [r["name"] for r in listed]
    assert all(r["description"] and "\n" not in r["description"] for r in listed)
    if kind == "models":
        assert names == list(MODELS)
    elif kind == "datasets":
        assert names == list(DATASETS)
    elif kind == "methods":
        assert [r["name"] for r in listed if r["kind"] == "variant"] == list(VARIANTS)
        assert {"float", "minmax"} <= set(names)
    else:
        assert "digits" in names


def test_list_text_has_one_line_per_entry(capsys):
    assert main(["list", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(MODELS)
    assert lines[1].startswith("mlp ")


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "no-such-recipe"], "no recipe file 'no-such-recipe'"),
    (["train", "{bad}"], "train.epochs: expected int, got str"),
    (["run", "digits", "--seed", "-1"], "seed"),
    (["eval", "{user}"], "learnq.load(path, model)"),
    (["eval", "{dir}"], "without model.safetensors"),
])
def test_user_errors_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nepochs = "two"\n')
    user = tmp_path / "user.safetensors"
    ckpt.save(torch.nn.Linear(2, 2), user)
    argv = [a.format(bad=bad, user=user, dir=tmp_path) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"learnq {argv[0]}: error: ")
    assert needle in err


def _leaf_commands(parser, path=()):
    """(command words, parser) of every command, subcommands included (``analyze weights``...)."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    return [leaf for name, sub in subs[0].choices.items() for leaf in _leaf_commands(sub, (*path, name))]


def test_every_command_takes_json_seed_and_quiet():
    from learnq.cli import COMMANDS, build_parser

    leaves = _leaf_commands(build_parser())
    assert len({words[0] for words, _ in leaves}) == len(COMMANDS)
    assert ("analyze", "weights") in {words for words, _ in leaves}
    missing = {" ".join(words): sorted({"--json", "--seed", "--quiet"} - {s for a in p._actions
                                                                          for s in a.option_strings})
               for words, p in leaves}
    assert {k: v for k, v in missing.items() if v} == {}


def test_train_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text(TINY)
    two.write_text(TINY.replace("epochs = 1", "epochs = 2"))
    assert main(["train", str(one), "--out", str(tmp_path / "resumed"), "--quiet"]) == 0
    assert "resumed after" not in capsys.readouterr().out
    assert main(["train", str(two), "--out", str(tmp_path / "resumed"), "--resume", "--quiet"]) == 0
    assert "resumed after epoch 1 of 2 (from checkpoints/last.pt); trained epoch 2" in capsys.readouterr().out
    assert main(["train", str(two), "--out", str(tmp_path / "straight"), "--quiet"]) == 0
    resumed = ckpt.read(tmp_path / "resumed" / "model.safetensors").entries
    straight = ckpt.read(tmp_path / "straight" / "model.safetensors").entries
    assert list(resumed) == list(straight)
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    three = tmp_path / "three.toml"
    three.write_text(TINY.replace("epochs = 1", "epochs = 3"))
    printed = _json(capsys, ["train", str(three), "--out", str(tmp_path / "resumed"), "--resume", "--json"])
    assert printed["resumed_from_epoch"] == 2 and len(printed["history"]) == 3
    again = _json(capsys, ["run", str(three), "--out", str(tmp_path / "resumed"), "--resume", "--json"])
    assert again["resumed_from_epoch"] == 3 and len(again["rows"]) == 2  # nothing left to train; the variants run
    assert _json(capsys, ["train", str(one), "--out", str(tmp_path / "fresh"), "--json"])["resumed_from_epoch"] \
        is None


def test_a_missing_data_directory_names_the_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "mnist.toml"
    recipe.write_text(TINY.replace('name = "digits"', f'name = "mnist"\nroot = "{tmp_path / "nowhere"}"'))
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.root" in err and str(tmp_path / "nowhere") in err
