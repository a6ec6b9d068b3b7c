"""``learnq train`` / ``eval`` / ``list`` on the text data sets and models, end to end on a fake corpus."""

from __future__ import annotations

import json
import math

import pytest

from learnq.cli import main
from learnq.pipeline.recipe import builtin_recipes, load_recipe
from tests.text_util import write_archive, write_corpus

LM = """
name = "lm"
[data]
name = "shakespeare-char"
root = "{root}"
calib_size = 8
options = {{ block_size = 32 }}
[model]
name = "gpt"
args = {{ n_layer = 1, n_head = 2, n_embd = 32 }}
[train]
epochs = 3
batch_size = 16
lr = 0.01
optimizer = "adamw"
[[variants]]
method = "float"
[report]
plots = false
"""

CLASSIFIER = """
name = "bm"
[data]
name = "bard-or-milton"
root = "{root}"
calib_size = 8
options = {{ block_size = 48 }}
[model]
name = "encoder-classifier"
args = {{ n_layer = 1, n_head = 2, n_embd = 32, dropout = 0.0, attention = "{attention}" }}
[train]
epochs = 3
batch_size = 32
lr = 0.005
[[variants]]
method = "float"
[report]
plots = false
"""


def _json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_language_model_trains_and_eval_rebuilds_it_from_the_file(tmp_path, capsys):
    folder = write_corpus(tmp_path / "data")
    recipe = tmp_path / "lm.toml"
    recipe.write_text(LM.format(root=folder))
    out = tmp_path / "run"
    trained = _json(capsys, ["train", str(recipe), "--out", str(out), "--json", "--quiet"])
    test = trained["test"]
    assert math.isclose(test["bits_per_char"], test["loss"] / math.log(2), rel_tol=1e-12)
    assert math.isclose(test["perplexity"], math.exp(test["loss"]), rel_tol=1e-12)
    history = trained["history"]
    assert history[-1]["test_loss"] < history[0]["test_loss"] < math.log(98)  # it learns
    assert test["bits_per_char"] < 2.0  # the fake plays repeat 15 words (1.13 measured; log2(98) = 6.6 bits)
    evaluated = _json(capsys, ["eval", str(out), "--json"])
    assert evaluated["data"] == "shakespeare-char" and evaluated["model"] == "gpt"
    # the same weights (reloaded bit-exact) on the same windows, evaluated by the same code
    for key in ("loss", "bits_per_char", "perplexity", "accuracy", "n"):
        assert math.isclose(evaluated[key], test[key], rel_tol=1e-6), key
    main(["eval", str(out)])
    text = capsys.readouterr().out
    assert "bits per character" in text and "perplexity" in text
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["test"]["perplexity"] == test["perplexity"]


@pytest.mark.parametrize("attention", ["linear", "mha"])
def test_classifier_learns_the_authors_from_the_archive(tmp_path, capsys, attention):
    archive = write_archive(tmp_path / "data")
    recipe = tmp_path / "bm.toml"
    recipe.write_text(CLASSIFIER.format(root=archive, attention=attention))
    out = tmp_path / "run"
    result = _json(capsys, ["run", str(recipe), "--out", str(out), "--json", "--quiet", "--seed", "1"])
    assert result["rows"][0]["accuracy"] > 0.9  # two disjoint word lists
    evaluated = _json(capsys, ["eval", str(out / "model.safetensors"), "--json"])
    assert "perplexity" not in evaluated and evaluated["accuracy"] == result["rows"][0]["accuracy"]


def test_missing_corpus_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LEARNQ_DATA", str(tmp_path / "nothing"))
    recipe = tmp_path / "lm.toml"
    recipe.write_text(LM.format(root="x").replace('root = "x"\n', ""))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make data" in err[0]


def test_list_shows_the_text_data_sets_and_models(capsys):
    datasets = {d["name"] for d in _json(capsys, ["list", "datasets", "--json"])["datasets"]}
    models = {m["name"] for m in _json(capsys, ["list", "models", "--json"])["models"]}
    assert {"shakespeare-char", "bard-or-milton"} <= datasets and {"gpt", "encoder-classifier"} <= models


def test_builtin_text_recipe_is_small():
    assert "text" in builtin_recipes()
    recipe = load_recipe("text")
    assert recipe.data.name == "shakespeare-char" and recipe.model.name == "gpt"
    assert recipe.data.limit is not None and recipe.data.limit * recipe.data.options["block_size"] <= 500_000


def test_heldout_test_trains_the_same_model_and_only_changes_what_is_evaluated(tmp_path):
    import torch

    from learnq.pipeline.recipe import parse_recipe
    from learnq.pipeline.run import train_recipe

    folder = write_corpus(tmp_path / "data")
    base = LM.format(root=folder).replace("epochs = 3", "epochs = 2")
    runs = {}
    for heldout in ("validation", "test"):
        text = base.replace("{ block_size = 32 }", f'{{ block_size = 32, heldout = "{heldout}" }}')
        runs[heldout] = train_recipe(parse_recipe(text), tmp_path / heldout)
    a, b = (runs[h].model.state_dict() for h in ("validation", "test"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same data, seed and kernels: bit-identical weights
    assert runs["validation"].test["n"] != runs["test"].test["n"]
    assert runs["test"].splits.preprocessing["heldout"] == "test"
