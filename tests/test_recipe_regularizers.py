"""Recipes' training-time sections: [[regularizers]], [satnl], [asam] (parsing, errors naming the key, wiring into
train_recipe, SatNL baked into the saved model, ASAM actually stepping, metrics.json's "training" record)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from recipe_util import tiny_recipe
from torch import nn

from learnq.checkpoint import read
from learnq.errors import ConfigError
from learnq.optim import ASAM
from learnq.pipeline.model_files import evaluate_file
from learnq.pipeline.recipe import ASAMSection, Recipe, SatNLSection, load_recipe, parse_recipe
from learnq.pipeline.registry import QAT_SECTIONS
from learnq.pipeline.run import MODEL_FILE, train_recipe
from learnq.pipeline.training import prepare_training
from learnq.pipeline.variants import QATInfo
from learnq.regularizers import DSMM, SatNL, SymReg

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_recipe(None, seed=3, limit=160, hidden=(12,), batch_size=32, lr=0.01, plots=None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


# -- parsing and validation ----------------------------------------------------------------------------------------


def test_sections_absent_by_default_and_parsed_when_present():
    plain = parse_recipe(TINY)
    assert plain.satnl is None and plain.asam is None and plain.regularizers == []
    r = parse_recipe(TINY + "\n[satnl]\nlearnable = true\n\n[asam]\nrho = 0.2\neta = 0\n")
    assert r.satnl == SatNLSection(learnable=True)
    assert r.asam == ASAMSection(rho=0.2, eta=0.0) and isinstance(r.asam.eta, float)
    empty = parse_recipe(TINY + "\n[satnl]\n\n[asam]\n")  # an empty table turns the method on with its defaults
    assert empty.satnl == SatNLSection(learnable=False) and empty.asam == ASAMSection(rho=0.5, eta=0.01)
    assert Recipe.from_dict(r.to_dict()) == r
    assert json.loads(r.to_json())["asam"] == {"rho": 0.2, "eta": 0.0}


@pytest.mark.parametrize(("extra", "message"), [
    ("[satnl]\nenabled = true\n", "satnl.enabled: unknown key"),
    ("[satnl]\nlearnable = 1\n", "satnl.learnable: expected bool, got int"),
    ("[asam]\nr = 0.5\n", "asam.r: unknown key"),
    ('[asam]\nrho = "big"\n', "asam.rho: expected float, got str"),
    ("[asam]\nrho = 0\n", "asam.rho: rho must be a finite float > 0, got 0.0"),
    ("[asam]\nrho = nan\n", "asam.rho: rho must be a finite float > 0"),
    ("[asam]\neta = -0.1\n", "asam.eta: eta must be a finite float >= 0, got -0.1"),
    ('[[regularizers]]\nname = "dsm"\n', "regularizers[0].name: unknown regularizer 'dsm'"),
    ('[[regularizers]]\nname = "kure"\noptions = { alpha_init = 1.0 }\n',
     "regularizers[0].options.alpha_init: regularizer 'kure' has no such option"),
    ('[[regularizers]]\nname = "l2"\nstrength = -1\n', "regularizers[0].strength: must be >= 0"),
    ('[[regularizers]]\nname = "l2"\nweight = 1\n', "regularizers[0].weight: unknown key"),
])
def test_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_recipe(TINY + "\n" + extra)


def test_document_recipes_use_the_sections():
    symreg = load_recipe(ROOT / "recipes" / "symreg-mnist5k.toml")
    assert [r.name for r in symreg.regularizers] == ["symreg"]
    assert symreg.satnl == SatNLSection(learnable=False) and symreg.asam == ASAMSection(rho=0.5, eta=0.01)
    dsmm = load_recipe(ROOT / "recipes" / "dsmm-mnist5k.toml")
    assert [(r.name, r.strength, r.options) for r in dsmm.regularizers] == [("dsmm", 0.01, {"alpha_init": 0.1})]
    assert dsmm.satnl is None and dsmm.asam is None


# -- prepare_training ------------------------------------------------------------------------------------------------


def test_prepare_training_applies_satnl_first_and_groups_its_levels():
    recipe = parse_recipe(TINY + '\n[satnl]\nlearnable = true\n\n[[regularizers]]\nname = "dsmm"\n'
                          '\n[[regularizers]]\nname = "symreg"\nstrength = 0.5\n')
    model = _model()
    before = {n: m.weight.detach().abs().max().item() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    parts = prepare_training(recipe, model, "cpu")
    assert SatNL.is_applied(model)
    assert SatNL.scales(model) == pytest.approx(before, rel=1e-6)
    groups = parts.kwargs["extra_params"]
    # SatNL's two levels, then DSMM's two temperatures; both without weight decay
    assert [len(g["params"]) for g in groups] == [2, 2] and all(g["weight_decay"] == 0.0 for g in groups)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in SatNL.scale_parameters(model)}
    assert list(parts.regularizers) == ["dsmm", "symreg"] and list(parts.kwargs["extra_losses"]) == ["dsmm", "symreg"]
    assert isinstance(parts.regularizers["dsmm"], DSMM) and isinstance(parts.regularizers["symreg"], SymReg)
    assert parts.regularizers["symreg"].strength == 0.5
    assert "optimizer_wrapper" not in parts.kwargs
    # the loss terms see the saturated weight a·tanh(w/a), not the stored one
    layer = model[1]
    w_eff = layer.weight.detach()
    a = SatNL.scales(model)["1"]
    assert torch.allclose(w_eff, a * torch.tanh(layer.parametrizations.weight.original.detach() / a))
    assert parts.kwargs["extra_losses"]["symreg"](model).item() == pytest.approx(
        0.5 * parts.regularizers["symreg"].reduce(parts.regularizers["symreg"]._losses()).item())


def test_prepare_training_repeated_regularizer_names_get_indices():
    recipe = parse_recipe(TINY + '\n[[regularizers]]\nname = "l2"\n\n[[regularizers]]\nname = "l2"\nstrength = 0.1\n')
    parts = prepare_training(recipe, _model(), "cpu")
    assert list(parts.kwargs["extra_losses"]) == ["l20", "l21"]
    assert parts.kwargs["extra_params"] == []


def test_prepare_training_asam_wrapper():
    recipe = parse_recipe(TINY + "\n[asam]\nrho = 0.3\neta = 0.02\n")
    model = _model()
    parts = prepare_training(recipe, model, "cpu")
    assert not SatNL.is_applied(model)
    wrapped = parts.kwargs["optimizer_wrapper"](torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert isinstance(wrapped, ASAM) and (wrapped.rho, wrapped.eta) == (0.3, 0.02) and wrapped.model is model


def test_asam_with_a_qat_method_that_wraps_the_optimizer_is_refused(monkeypatch):
    def prepare(model, qat, seed, device):
        return {"optimizer_wrapper": lambda opt, m: opt}

    monkeypatch.setitem(QAT_SECTIONS, "fake-wrapping", QATInfo("fake-wrapping", "test only", prepare))
    recipe = parse_recipe(TINY + '\n[qat]\nmethod = "fake-wrapping"\nbits = 4\n\n[asam]\n')
    with pytest.raises(ConfigError, match="asam: the \\[qat\\] method 'fake-wrapping' already wraps the optimizer"):
        prepare_training(recipe, _model(), "cpu")


# -- train_recipe ------------------------------------------------------------------------------------------------


def test_satnl_is_baked_into_the_saved_model(tmp_path):
    recipe = parse_recipe(TINY + '\n[satnl]\n\n[[regularizers]]\nname = "symreg"\nstrength = 0.1\n')
    trained = train_recipe(recipe, tmp_path)
    assert not SatNL.is_applied(trained.model)  # removed after training
    scales = trained.training["satnl"]["scales"]
    assert set(scales) == {"fc1", "fc2"} and trained.training["satnl"]["learnable"] is False
    for name, a in scales.items():
        w = getattr(trained.model, name).weight.detach()
        assert float(w.abs().max()) < a  # |a·tanh(w/a)| < a: the stored weights are the saturated ones
    # the last epoch's test metrics (model still parametrized) equal the baked model's, and the file's
    last = trained.history[-1]
    assert last["test_acc"] == trained.test["accuracy"]
    assert last["test_loss"] == pytest.approx(trained.test["loss"], rel=1e-6)
    assert evaluate_file(tmp_path)["accuracy"] == trained.test["accuracy"]
    assert set(read(tmp_path / MODEL_FILE).entries) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["training"]["satnl"]["scales"] == pytest.approx(scales)
    assert set(metrics["training"]["regularizers"]["symreg"]["per_layer"]) == {"fc1", "fc2"}
    assert math.isfinite(trained.history[0]["extra"]["symreg"])


def test_asam_steps_every_batch_and_dsmm_alphas_are_recorded(tmp_path, monkeypatch):
    calls = []
    original = ASAM.step

    def counting(self, closure):
        calls.append((self.rho, self.eta))
        return original(self, closure)

    monkeypatch.setattr(ASAM, "step", counting)
    recipe = parse_recipe(TINY + '\n[asam]\nrho = 0.1\neta = 0.05\n\n[[regularizers]]\nname = "dsmm"\n'
                          "options = { alpha_init = 0.2 }\n")
    trained = train_recipe(recipe, tmp_path)
    n_train = len(trained.splits.train)
    assert calls == [(0.1, 0.05)] * math.ceil(n_train / 32)
    alphas = trained.training["regularizers"]["dsmm"]["alpha"]
    assert set(alphas) == {"fc1", "fc2"} and all(a != 0.2 for a in alphas.values())  # trained, not the init
    assert trained.training["asam"] == {"rho": 0.1, "eta": 0.05}
    assert trained.regularizers["dsmm"].alphas() == alphas


def test_without_asam_the_plain_optimizer_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ASAM, "step", lambda self, closure: calls.append(1))
    trained = train_recipe(parse_recipe(TINY), tmp_path)
    assert calls == [] and trained.training == {"regularizers": {}, "satnl": None, "asam": None}
