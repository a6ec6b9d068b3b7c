"""learnq.pipeline.recipe: TOML recipes, validation errors naming the key, seeds, JSON round trips, built-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_util import tiny_recipe

from learnq.errors import ConfigError
from learnq.pipeline.recipe import RECIPE_VERSION, Recipe, builtin_recipes, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]

BASE = tiny_recipe(None, hidden=(16,), calib_size=None, batch_size=None, lr=None, plots=None,
                   tables='[[variants]]\nmethod = "float"\n\n[[variants]]\nmethod = "minmax"\nbits = 4\n')


def test_minimal_recipe_fills_defaults():
    r = parse_recipe(BASE, default_name="tiny")
    assert r.name == "tiny" and r.version == RECIPE_VERSION
    assert (r.data.name, r.data.limit, r.data.calib_size, r.data.test_fraction) == ("digits", 200, 512, 0.2)
    assert r.model.args == {"hidden": [16]}
    assert (r.train.epochs, r.train.batch_size, r.train.optimizer) == (1, 64, "adam")
    assert [v.label for v in r.variants] == ["float", "minmax-w4"]
    assert r.variants[1].grid_spec().bits == 4 and str(r.variants[1].grid_spec().granularity) == "axis:0"
    assert r.variants[0].weight_bits == 32


@pytest.mark.parametrize(("text", "key"), [
    ("colour = 1\n", "colour: unknown key"),
    ("[train]\nepochz = 3\n", "train.epochz: unknown key"),
    ('[train]\nepochs = "3"\n', "train.epochs: expected int, got str"),
    ("[train]\nepochs = 2.5\n", "train.epochs: expected int, got float"),
    ("[train]\nepochs = true\n", "train.epochs: expected int, got bool"),
    ("[train]\nepochs = 0\n", "train.epochs: must be an int >= 1"),
    ('[train]\noptimizer = "adagrad"\n', "train.optimizer: must be one of"),
    ('[model]\nname = "mlpp"\n', "model.name: unknown model 'mlpp'"),
    ("[model]\nargs = { width = 3 }\n", "model.args.width: model 'mlp' has no such argument"),
    ('[data]\nname = "digitz"\n', "data.name: unknown data set 'digitz'"),
    ('[data]\nlimit = "10"\n', "data.limit: expected int, got str"),
    ("[data]\ntest_fraction = 1.0\n", "data.test_fraction: must be between 0 and 1"),
    ("[data]\noptions = { size = 10 }\n", "data.options.size: unknown option of data set digits"),
    ('[data]\nroot = "/tmp"\n', "data.root: data set digits is built in"),
    ('[data]\nname = "mnist"\n', "data.root: data set mnist is read from a directory"),
    ('[[variants]]\nmethod = "foo"\nbits = 4\n', "variants[0].method: unknown quantization method 'foo'"),
    ('[[variants]]\nmethod = "minmax"\n', "variants[0].bits: missing"),
    ('[[variants]]\nmethod = "minmax"\nbits = 17\n', "variants[0].bits: bits must be an integer from 1 to 16"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\ncolor = 1\n', "variants[0].color: unknown key"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\ngranularity = "diagonal"\n',
     "variants[0].granularity: granularity 'diagonal' is unknown"),
    ('[[variants]]\nmethod = "float"\nabits = 8\n', "variants[0].abits: method 'float' quantizes weights"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\noptions = { p = 2 }\n', "variants[0].options.p: unknown option"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\nselect = { typs = ["conv"] }\n', "variants[0].select.typs"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\nbits_overrides = { "0.weight" = 20 }\n',
     "variants[0].bits_overrides.0.weight"),
    ('[[variants]]\nmethod = "float"\nbits = 4\n', "variants[0].bits: method 'float' quantizes nothing"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\nname = "a/b"\n', "variants[0].name: 'a/b' is not a valid"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\n[[variants]]\nmethod = "minmax"\nwbits = 4\n',
     "variants[1]: its name 'minmax-w4' is also the name of variants[0]"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\nwbits = 3\n', "variants[0]: bits=4 and wbits=3 disagree"),
    ('[[regularizers]]\nname = "dsm"\n', "regularizers[0].name: unknown regularizer 'dsm'"),
    ('[[regularizers]]\nname = "dsmm"\noptions = { beta = 1 }\n', "regularizers[0].options.beta"),
    ('[[regularizers]]\nname = "dsmm"\nstrength = "high"\n', "regularizers[0].strength: expected float, got str"),
    ('[qat]\nmethod = "nothing-yet"\n', "qat.method: unknown QAT method 'nothing-yet'"),
    ("version = 99\n", "version: this learnq reads recipe version 1"),
    ("seed = -1\n", "seed: must be >= 0"),
    ('[[variants]]\nmethod = "minmax"\nbits = 4\nscheme = "odd"\n', "variants[0]: scheme 'odd' is unknown"),
])
def test_validation_errors_name_the_key(text, key):
    with pytest.raises(ConfigError) as info:
        parse_recipe(text, "r.toml")
    assert str(info.value).startswith("r.toml: ")
    assert key in str(info.value)


def test_toml_syntax_error_is_a_config_error():
    with pytest.raises(ConfigError, match=r"r\.toml: not valid TOML"):
        parse_recipe("[train\nepochs = 1", "r.toml")


def test_wbits_is_an_alias_of_bits():
    r = parse_recipe('[[variants]]\nmethod = "minmax"\nwbits = 3\n')
    assert (r.variants[0].bits, r.variants[0].wbits, r.variants[0].label) == (3, None, "minmax-w3")


def test_ints_are_accepted_for_floats():
    r = parse_recipe("[train]\nlr = 1\n")
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)


def test_top_level_seed_is_the_default_of_data_and_train_seeds():
    r = parse_recipe("seed = 7\n")
    assert (r.seed, r.data.seed, r.train.seed) == (7, 7, 7)
    r = parse_recipe("seed = 7\n[train]\nseed = 3\n[data]\nseed = 4\n")
    assert (r.seed, r.data.seed, r.train.seed) == (7, 4, 3)


def test_with_seed_overrides_every_seed_and_leaves_the_original():
    r = parse_recipe("seed = 7\n[train]\nseed = 3\n[data]\nseed = 4\n")
    s = r.with_seed(11)
    assert (s.seed, s.data.seed, s.train.seed) == (11, 11, 11)
    assert (r.seed, r.data.seed, r.train.seed) == (7, 4, 3)
    with pytest.raises(ConfigError, match="seed"):
        r.with_seed(-2)


def test_json_round_trip_is_exact():
    r = parse_recipe(BASE + '\n[[regularizers]]\nname = "dsmm"\nstrength = 0.01\n\n[report]\nplots = false\n')
    text = r.to_json()
    back = Recipe.from_dict(json.loads(text))
    assert back == r
    assert back.to_json() == text


def test_method_options_get_their_defaults(monkeypatch):
    from learnq.pipeline import registry as R
    from learnq.pipeline import variants as V

    info = V.VariantInfo("toy", "toy method", V.apply_float, options={"steps": 3, "tau": 0.5, "mode": "a"})
    monkeypatch.setitem(R.VARIANTS, "toy", info)
    r = parse_recipe('[[variants]]\nmethod = "toy"\nbits = 4\noptions = { tau = 1 }\n')
    assert r.variants[0].options == {"steps": 3, "tau": 1, "mode": "a"}
    with pytest.raises(ConfigError, match=r"variants\[0\]\.options\.steps: expected int, got float"):
        parse_recipe('[[variants]]\nmethod = "toy"\nbits = 4\noptions = { steps = 1.5 }\n')


def test_builtin_digits_and_the_repository_copy_are_identical():
    assert "digits" in builtin_recipes()
    packaged = ROOT / "learnq" / "recipes" / "digits.toml"
    assert (ROOT / "recipes" / "digits.toml").read_bytes() == packaged.read_bytes()
    r = load_recipe("digits")
    assert r.name == "digits" and r.data.name == "digits"
    assert [(v.method, v.weight_bits, str(v.grid_spec().granularity) if v.bits else None) for v in r.variants
            if v.method in ("float", "minmax")] == [
        ("float", 32, None), ("minmax", 8, "axis:0"), ("minmax", 4, "axis:0"), ("minmax", 2, "axis:0")]
    ptq = [(v.label, v.weight_bits, v.abits, str(v.grid_spec().granularity)) for v in r.variants if v.abits]
    assert ptq == [("mse-w4a4", 4, 4, "tensor"), ("aciq-w4a4", 4, 4, "tensor"), ("lapq-w4a4", 4, 4, "tensor")]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_repository_recipe_validates(path):
    r = load_recipe(path)
    assert r.name == path.stem
    assert Recipe.from_dict(r.to_dict()) == r


def test_load_recipe_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"no recipe file 'nope\.toml' and no built-in recipe.*digits"):
        load_recipe("nope.toml")
    with pytest.raises(ConfigError, match="is not a file"):
        load_recipe(tmp_path)
    f = tmp_path / "mine.toml"
    f.write_text('[train]\nepochs = "x"\n')
    with pytest.raises(ConfigError, match=r"mine\.toml: train\.epochs: expected int, got str"):
        load_recipe(f)


def test_a_sweep_recipe_parses_as_its_base_recipe_and_its_space_is_validated():
    base = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "digits-sweep.toml")
    assert len(base.variants) == 1
    bad = """
[data]
name = "digits"
[model]
name = "mlp"
[[variants]]
method = "minmax"
bits = 4
[sweep.space]
"variant.bits" = [2, 40]
"""
    with pytest.raises(ConfigError, match="variant.bits"):
        parse_recipe(bad)
