"""learnq.pipeline.ptq_variants: every PTQ method as a recipe variant with wbits/abits; the saved, reloaded file
computes what the quantized model computed; rows carry abits; options and recipe errors."""

from __future__ import annotations

import copy

import pytest
import torch
from recipe_util import tiny_recipe

from learnq.act import input_quantizers
from learnq.checkpoint import load, read, save
from learnq.cli import main
from learnq.errors import ConfigError, ModelError
from learnq.pipeline import ptq_variants as PV
from learnq.pipeline.data import load_dataset
from learnq.pipeline.model_files import evaluate_file
from learnq.pipeline.models import model_from_spec, model_spec
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.registry import VARIANTS, apply_variant, register_ptq_variants
from learnq.pipeline.run import ROW_KEYS, run_recipe
from learnq.ptq.registry import PTQ_METHODS, available_methods, register_ptq_method

BASE = tiny_recipe("tiny-ptq", seed=1, limit=240, calib_size=48, hidden=(16, 12), epochs=2, batch_size=32, lr=0.01)

ROWS = """
[[variants]]
method = "float"

[[variants]]
method = "mse"
wbits = 4
abits = 4
granularity = "tensor"

[[variants]]
method = "lapq"
wbits = 4
abits = 4
granularity = "tensor"
options = { p_count = 3, maxiter = 1, calib_samples = 32 }

[[variants]]
method = "aciq"
bits = 32
abits = 4

[[variants]]
method = "minmax"
bits = 4
"""


def _variant(text: str):
    return parse_recipe(BASE + "[[variants]]\n" + text).variants[0]


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", seed=0, calib_size=40, limit=200)


def _mlp(splits, hidden=(16, 12)):
    torch.manual_seed(0)
    spec = model_spec("mlp", splits.input_shape, splits.num_classes, hidden=list(hidden))
    return spec, model_from_spec(spec)


def test_every_ptq_method_is_a_variant_and_listed(capsys):
    names = available_methods()
    assert {"minmax", "mse", "lp", "aciq", "kl", "adaround", "lapq"} <= set(names)
    for name in names:
        assert VARIANTS[name].apply is PV.apply_ptq and VARIANTS[name].activations
        assert set(PV.PTQ_OPTIONS) | set(PTQ_METHODS[name].options) == set(VARIANTS[name].options)
    capsys.readouterr()
    assert main(["list", "methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if "variant" in line.split()[1:2]}
    assert set(names) <= listed


def test_run_rows_carry_abits_and_reloaded_accuracy_equals_in_memory(tmp_path):
    result = run_recipe(parse_recipe(BASE + ROWS), tmp_path)
    rows = result.rows
    assert [tuple(r) for r in rows] == [ROW_KEYS] * 5
    assert [(r["method"], r["bits"], r["abits"], r["file"]) for r in rows] == [
        ("float", 32, 32, "model.safetensors"), ("mse", 4, 4, "mse-w4a4.safetensors"),
        ("lapq", 4, 4, "lapq-w4a4.safetensors"), ("aciq", 32, 4, "aciq-w32a4.safetensors"),
        ("minmax", 4, 32, "minmax-w4.safetensors")]
    for row, detail in zip(rows, result.details, strict=True):
        assert detail["accuracy"] == detail["accuracy_before_save"] == row["accuracy"]
        again = evaluate_file(tmp_path / row["file"])
        assert (again["accuracy"], again["bits"], again["abits"]) == (row["accuracy"], row["bits"], row["abits"])
    # activation quantizers are in the W?A4 files (lapq: first and last layers in float by default), not in minmax's
    acts = {r["file"]: set(read(tmp_path / r["file"]).metadata.get("activations", {}).get("quantizers", {}))
            for r in rows[1:]}
    assert acts == {"mse-w4a4.safetensors": {"fc1", "fc2", "fc3"}, "lapq-w4a4.safetensors": {"fc2"},
                    "aciq-w32a4.safetensors": {"fc1", "fc2", "fc3"}, "minmax-w4.safetensors": set()}
    assert rows[3]["ratio"] < 1.0 < rows[1]["ratio"]  # W32A4 stores float weights (plus the steps)
    report = (tmp_path / "report.md").read_text()
    assert "| method | bits | abits | accuracy % |" in report


@pytest.mark.parametrize("text", [
    'method = "mse"\nwbits = 3\nabits = 5\ngranularity = "channel"\noptions = { bias_correction = true }\n',
    'method = "kl"\nwbits = 8\nabits = 2\ngranularity = "tensor"\n',
    'method = "minmax"\nbits = 32\nabits = 3\n',
    'method = "adaround"\nwbits = 2\nabits = 8\ngranularity = "tensor"\noptions = { iterations = 50 }\n',
])
def test_reloaded_file_computes_what_the_quantized_model_computed(splits, tmp_path, text):
    spec, model = _mlp(splits)
    variant = _variant(text)
    quantized = apply_variant(model, splits, variant, seed=3)
    path = tmp_path / "q.safetensors"
    save(quantized, path)
    fresh = model_from_spec(spec)
    load(path, fresh)
    x = splits.test.tensors[0]
    assert torch.equal(fresh(x), quantized(x))
    assert {n: q.bits for n, q in input_quantizers(fresh).items()} == {"fc1": variant.abits, "fc2": variant.abits,
                                                                          "fc3": variant.abits}
    assert not torch.equal(fresh(x), model_from_spec(spec)(x))  # something was quantized


def test_calib_samples_uses_the_first_n_calibration_samples(splits):
    """W32A8 minmax: fc2's input step α is the largest ReLU(fc1(x)) over exactly the first N calibration inputs."""
    _, model = _mlp(splits)
    x = splits.calib.tensors[0]
    with torch.no_grad():  # fc2's input in the float model (weights stay in float), on the batches calibration runs
        # (one of 7 samples, one of all 40): a batch of 40 cut to 7 may run another kernel, values ulps apart
        h = torch.relu(model.fc1(x.flatten(1)))
        h7 = torch.relu(model.fc1(x[:7].flatten(1)))
    assert float(h7.max()) < float(h.max())  # the check can tell N samples from all of them
    text = 'method = "minmax"\nbits = 32\nabits = 8\n'
    out = apply_variant(copy.deepcopy(model), splits, _variant(text + 'options = { calib_samples = 7 }\n'), seed=0)
    assert not input_quantizers(out)["fc2"].signed  # after a ReLU: the unsigned grid
    assert float(input_quantizers(out)["fc2"].alpha) == pytest.approx(float(h7.max()), rel=1e-6)
    assert input_quantizers(out)["fc1"].signed  # normalised pixels take both signs
    out = apply_variant(copy.deepcopy(model), splits, _variant(text), seed=0)
    assert float(input_quantizers(out)["fc2"].alpha) == pytest.approx(float(h.max()), rel=1e-6)


def test_minmax_without_abits_stays_the_weight_only_variant(splits):
    plain = _variant('method = "minmax"\nbits = 4\nbits_overrides = { "fc3.weight" = 8 }\nrounding = "floor"\n')
    assert not PV.uses_ptq(plain)
    _, model = _mlp(splits)
    out = apply_variant(model, splits, plain, seed=0)
    assert input_quantizers(out) == {}
    assert PV.uses_ptq(_variant('method = "minmax"\nbits = 4\nabits = 8\n'))
    assert PV.uses_ptq(_variant('method = "minmax"\nbits = 4\noptions = { bias_correction = true }\n'))
    assert PV.uses_ptq(_variant('method = "mse"\nbits = 4\n'))  # weights only, through learnq.ptq


def test_labels_name_the_activation_bits():
    assert _variant('method = "aciq"\nbits = 32\nabits = 4\n').label == "aciq-w32a4"
    assert _variant('method = "mse"\nwbits = 4\n').label == "mse-w4"
    assert _variant('method = "lapq"\nwbits = 2\nabits = 8\nname = "mine"\n').label == "mine"


@pytest.mark.parametrize("text, message", [
    ('method = "mse"\nbits = 4\nbits_overrides = { "fc1.weight" = 8 }\n', r"variants\[0\]\.bits_overrides: not supp"),
    ('method = "minmax"\nbits = 4\nabits = 4\nrounding = "floor"\n', r"variants\[0\]\.rounding: learnq\.ptq rounds"),
    ('method = "mse"\nbits = 32\n', r"variants\[0\]\.bits: bits must be an integer from 1 to 16"),
    ('method = "mse"\nbits = 4\nabits = 32\n', r"variants\[0\]\.abits: bits must be an integer from 1 to 16"),
    ('method = "mse"\nabits = 4\n', r"variants\[0\]\.bits: missing"),
    ('method = "lapq"\nbits = 4\noptions = { skip_first_last = "yes" }\n',
     r"variants\[0\]\.options\.skip_first_last: expected bool"),
    ('method = "mse"\nbits = 4\noptions = { calib_samples = -1 }\n', r"variants\[0\]\.options\.calib_samples: must"),
    ('method = "mse"\nbits = 4\noptions = { p = 3.0 }\n', r"variants\[0\]\.options\.p: unknown option"),
    ('method = "lp"\nbits = 4\noptions = { p = "three" }\n', r"variants\[0\]\.options\.p: expected float"),
    ('method = "lapq"\nbits = 4\noptions = { maxiter = 1.5 }\n', r"variants\[0\]\.options\.maxiter: expected int"),
    ('method = "float"\nabits = 4\n', r"variants\[0\]\.abits: method 'float' quantizes weights only"),
])
def test_recipe_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(BASE + "[[variants]]\n" + text)


def test_lapq_on_a_two_layer_mlp_needs_its_first_and_last_layers(splits):
    """LAPQ leaves the first and last layers in float by default: a two-layer MLP has nothing left (clear error);
    ``skip_first_last = false`` quantizes both."""
    _, model = _mlp(splits, hidden=(16,))
    with pytest.raises(ModelError, match="after leaving out the first and last layers"):
        apply_variant(model, splits, _variant('method = "lapq"\nbits = 4\nabits = 4\n'), seed=0)
    _, model = _mlp(splits, hidden=(16,))
    text = 'method = "lapq"\nbits = 4\nabits = 4\noptions = { skip_first_last = false, p_count = 3, maxiter = 1 }\n'
    out = apply_variant(model, splits, _variant(text), seed=0)
    assert set(input_quantizers(out)) == {"fc1", "fc2"}


def test_a_ptq_method_registered_later_becomes_a_variant(monkeypatch):
    monkeypatch.setattr("learnq.ptq.registry.PTQ_METHODS", dict(PTQ_METHODS))
    monkeypatch.setitem(VARIANTS, "placeholder", VARIANTS["float"])  # restored after the test
    from learnq.ptq import registry

    def fn(ctx):
        ctx.attach_weights(clip="minmax")
        return {}

    register_ptq_method("toy-ptq", "a test method", fn, options={"steps": 2})
    try:
        assert register_ptq_variants() == ["toy-ptq"]
        assert register_ptq_variants() == []  # idempotent
        assert VARIANTS["toy-ptq"].options["steps"] == 2
        with pytest.raises(ConfigError, match=r"options\.steps: expected int"):
            parse_recipe(BASE + '[[variants]]\nmethod = "toy-ptq"\nbits = 4\noptions = { steps = 0.5 }\n')
        register_ptq_method("placeholder", "clashes with a variant", fn)
        with pytest.raises(ConfigError, match="'placeholder' clashes with the pipeline variant"):
            register_ptq_variants()
    finally:
        VARIANTS.pop("toy-ptq", None)
        registry.PTQ_METHODS.pop("placeholder", None)
