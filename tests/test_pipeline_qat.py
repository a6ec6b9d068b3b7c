"""learnq.pipeline.qat_variants: the QAT methods in recipes ([qat] and [[variants]]), their validation, the fine-tune /
freeze / save / reload chain computing exactly what the trained model computed, bits overrides and row bits."""

from __future__ import annotations

import json

import pytest
import torch
from recipe_util import tiny_recipe
from torch import nn
from torch.utils.data import TensorDataset

import learnq.checkpoint as ckpt
from learnq.attach import Selection
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor
from learnq.pipeline import qat_variants as Q
from learnq.pipeline.model_files import evaluate_file
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.registry import QAT_SECTIONS, VARIANTS
from learnq.pipeline.run import run_recipe, train_recipe
from learnq.pipeline.train import TrainConfig
from learnq.qat import prepare
from learnq.quantized import attach_quantized
from learnq.quantizers import LSQ, STE, DiffQ, Nested

BASE = tiny_recipe("tiny-qat", seed=2, limit=240, hidden=(16,), epochs=2, batch_size=32, lr=0.01)

VARIANT_ROWS = """
[[variants]]
method = "float"

[[variants]]
method = "ste"
bits = 2
options = { epochs = 1, batch_size = 32 }

[[variants]]
method = "lsq"
bits = 3
granularity = "tensor"
options = { epochs = 1, batch_size = 32 }

[[variants]]
method = "diffq"
options = { epochs = 1, batch_size = 32, penalty = 50.0, quant_lr = 0.05 }

[[variants]]
method = "nested"
granularity = "row"
options = { epochs = 1, batch_size = 32, gamma_inverse = 1e-4, quant_lr = 1e-3 }
"""


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.flatten(1).sum(1) > 0).long())


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))


# -- registry and configs ----------------------------------------------------------------------------------------


def test_the_four_methods_are_registered_as_variants_and_qat_methods():
    for name in ("nested", "diffq", "ste", "lsq"):
        assert name in VARIANTS and name in QAT_SECTIONS
        assert VARIANTS[name].learned_bits == (name in ("diffq", "nested"))
        assert VARIANTS[name].validate is Q.validate_variant and QAT_SECTIONS[name].validate is Q.validate_qat
        assert set(Q.FINETUNE_OPTIONS) <= set(VARIANTS[name].options)
        assert set(Q.FINETUNE_OPTIONS).isdisjoint(QAT_SECTIONS[name].options)


def test_recipe_keys_map_to_the_method_configs():
    assert Q.qat_config("ste", bits=4, granularity="channel") == STE(bits=4, granularity="channel")
    assert Q.qat_config("ste", bits=2, granularity="tensor", options={"scheme": "symmetric", "epochs": 9}) == \
        STE(bits=2, granularity="tensor", scheme="symmetric")  # pipeline keys (epochs) are not config fields
    assert Q.qat_config("lsq", bits=3, granularity="row") == LSQ(bits=3, granularity="channel")
    assert Q.qat_config("nested", bits=None, granularity="tensor").granularity == "scalar"
    assert Q.qat_config("nested", bits=None).init_bits == 8  # the pipeline's default (the config's is 16)
    assert Q.qat_config("nested", bits=None, granularity="scalar").granularity == "scalar"
    assert Q.qat_config("nested", bits=None, granularity="channel").granularity == "row"
    assert Q.qat_config("nested", bits=None, granularity="column").granularity == "column"
    assert Q.qat_config("diffq", bits=None).group_size == 8  # the default "channel": options.group_size
    assert Q.qat_config("diffq", bits=None, options={"group_size": 4}).group_size == 4
    assert Q.qat_config("diffq", bits=None, granularity="group:16").group_size == 16
    assert Q.qat_config("diffq", bits=None, granularity="tensor").group_size == 0
    cfg = Q.qat_config("diffq", bits=None, options={"penalty": 2.0}, bits_overrides={"fc1.*": 8},
                       select=Selection(skip_last=True))
    assert cfg == DiffQ(penalty=2.0, bits_overrides={"fc1.*": 8}, selection=Selection(skip_last=True))
    assert Q.qat_config("nested", bits=None, select=Selection()).selection is None  # the method's default (biases)
    assert Nested().default_selection().biases


@pytest.mark.parametrize("text, message", [
    ('[[variants]]\nmethod = "diffq"\nbits = 4\n', "variants[0].bits: diffq learns its bit-widths"),
    ('[[variants]]\nmethod = "nested"\nbits = 8\n', "variants[0].bits: nested learns its bit-widths"),
    ('[[variants]]\nmethod = "ste"\n', "variants[0].bits: missing"),
    ('[[variants]]\nmethod = "lsq"\nbits = 1\n', "variants[0]: LSQ.bits must be an integer >= 2"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\ngranularity = "group:8"\n', "variants[0].granularity: ste takes"),
    ('[[variants]]\nmethod = "nested"\ngranularity = "group:8"\n', "variants[0].granularity: the nested layer"),
    ('[[variants]]\nmethod = "diffq"\ngranularity = "row"\n', "variants[0].granularity: diffq learns bits per"),
    ('[[variants]]\nmethod = "diffq"\ngranularity = "group:16"\noptions = { group_size = 4 }\n',
     "'group:16' and options.group_size = 4 disagree"),
    ('[[variants]]\nmethod = "diffq"\noptions = { group_size = -1 }\n', "variants[0]: DiffQ.group_size must be"),
    ('[[variants]]\nmethod = "diffq"\noptions = { b_min = 6, b_max = 4 }\n', "DiffQ.b_max (4) must be larger"),
    ('[[variants]]\nmethod = "diffq"\noptions = { penalty = "big" }\n', "variants[0].options.penalty: expected float"),
    ('[[variants]]\nmethod = "diffq"\noptions = { lambda = 1.0 }\n', "variants[0].options.lambda: unknown option"),
    ('[[variants]]\nmethod = "nested"\noptions = { threshold = -1.0 }\n', "Nested.threshold must be a finite"),
    ('[[variants]]\nmethod = "nested"\noptions = { init_scale = 0.0 }\n', "Nested.init_scale must be"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\noptions = { epochs = 0 }\n', "variants[0].options.epochs must be"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\noptions = { optimizer = "lion" }\n', "variants[0].options.optimizer"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\noptions = { quant_lr = -1.0 }\n', "variants[0].options.quant_lr"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\nscheme = "affine"\n', "variants[0]: scheme and rounding are not used"),
    ('[[variants]]\nmethod = "ste"\nbits = 4\nbits_overrides = { "fc1.weight" = 17 }\n',
     "variants[0].bits_overrides.fc1.weight"),
    ('[qat]\nmethod = "lsq"\n', "qat.bits: missing"),
    ('[qat]\nmethod = "diffq"\nbits = 3\n', "qat.bits: diffq learns"),
    ('[qat]\nmethod = "nested"\noptions = { gamma_bins = -2.0 }\n', "qat: Nested.gamma_bins must be"),
    ('[qat]\nmethod = "ste"\nbits = 4\noptions = { epochs = 3 }\n', "qat.options.epochs: unknown option"),
    ('[qat]\nmethod = "ste"\nbits = 4\nbits_overrides = { "fc1.*" = 0 }\n', "qat: STE.bits_overrides"),
    ('[qat]\nmethod = "ste"\nbits = 4\n[[variants]]\nmethod = "float"\n', "variants: a recipe with [qat] trains"),
])
def test_recipe_validation_names_the_key(text, message):
    with pytest.raises(ConfigError) as info:
        parse_recipe(BASE + text, "r.toml")
    assert str(info.value).startswith("r.toml: ") and message in str(info.value)


def test_valid_qat_tables_round_trip_through_json():
    recipe = parse_recipe(BASE + '[qat]\nmethod = "diffq"\nbits_overrides = { "fc2.weight" = 8 }\n'
                                 'options = { penalty = 3.0, quant_lr = 0.01 }\n')
    assert recipe.qat.bits_overrides == {"fc2.weight": 8} and recipe.qat.options["penalty"] == 3.0
    again = parse_recipe(BASE + VARIANT_ROWS)
    assert [v.label for v in again.variants] == ["float", "ste-w2", "lsq-w3", "diffq", "nested"]
    assert again.variants[3].options["group_size"] == 8 and again.variants[3].options["epochs"] == 1
    from learnq.pipeline.recipe import Recipe

    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe


# -- fine-tune, freeze, save, reload -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", [STE(bits=2, granularity="channel"), LSQ(bits=3), DiffQ(penalty=10.0),
                                    Nested(granularity="row", init_bits=8, gamma_inverse=1e-3)],
                         ids=["ste", "lsq", "diffq", "nested"])
def test_finetuned_model_frozen_and_reloaded_computes_the_same_logits(config, tmp_path):
    model = _model()
    handle = prepare(model, config)
    history = Q.finetune(model, handle, _data(), TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0),
                         quant_lr=0.05)
    assert [h["epoch"] for h in history] == [1, 2] and not model.training
    assert all(h["true_size_mb"] > 0 for h in history)
    x = _data(32, seed=1).tensors[0]
    with torch.no_grad():
        trained = model(x)  # eval mode, quantizers attached
        summary = Q.freeze_with_summary(handle)
        frozen = model(x)
    reloaded = _model()
    ckpt.save(model, tmp_path / "m.safetensors")
    ckpt.load(tmp_path / "m.safetensors", reloaded)
    with torch.no_grad():
        again = reloaded.eval()(x)
    assert torch.equal(trained, frozen) and torch.equal(frozen, again)
    assert summary["method"] == config.method and summary["bits"] == pytest.approx(Q.mean_bits(model))
    if config.method in ("ste", "lsq"):
        assert summary["bits"] == config.bits


def test_finetune_moves_the_quantizer_parameters_with_quant_lr():
    model = _model()
    handle = prepare(model, DiffQ(penalty=100.0))
    before = {n: q.logits.detach().clone() for n, q in handle.quantizers.items()}
    Q.finetune(model, handle, _data(), TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=0), quant_lr=0.1)
    for name, q in handle.quantizers.items():
        moved = (q.logits.detach() - before[name]).abs().max()
        assert 0.3 < moved < 0.41  # Adam moves ~quant_lr per step (4 steps); the default lr 1e-3 would give < 0.005
        assert q.logits.detach().mean() < before[name].mean() - 0.2  # the size penalty pushes the bits down


def test_bits_overrides_keep_chosen_layers_at_8_bits():
    model = _model()
    config = Q.qat_config("ste", bits=2, granularity="tensor", bits_overrides={"1.weight": 8, "3.weight": 8})
    handle = prepare(model, config)
    assert {n: q.bits for n, q in handle.quantizers.items()} == {"1.weight": 8, "3.weight": 8}
    model = _model()
    handle = prepare(model, Q.qat_config("diffq", bits=None, bits_overrides={"3.weight": 8}))
    Q.finetune(model, handle, _data(), TrainConfig(epochs=1, batch_size=32, seed=0))
    exported = handle.export()
    assert exported["3.weight"].bits == 8 and exported["3.weight"].group_bits is None
    assert exported["1.weight"].group_bits is not None


def test_mean_bits_counts_each_group_at_its_width():
    model = _model()
    codes = torch.zeros(12, 16, dtype=torch.int32)
    attach_quantized(model, "1.weight", QuantizedTensor(codes=codes, scale=torch.ones(1), offset=torch.zeros(1),
                                                        granularity=Granularity("tensor"), bits=4))
    assert Q.mean_bits(model) == 4
    gran = Granularity("group", group_size=8)  # 3 groups of 8 in the 2x12 weight, widths 2, 6, 2
    widths = torch.tensor([2, 6] * 12, dtype=torch.uint8)
    attach_quantized(model, "3.weight", QuantizedTensor(
        codes=torch.zeros(2, 12, dtype=torch.int32), scale=torch.ones(3), offset=torch.zeros(3), granularity=gran,
        bits=6, group_bits=widths[:3]))
    assert Q.mean_bits(model) == pytest.approx((192 * 4 + 8 * 2 + 8 * 6 + 8 * 2) / (192 + 24))
    assert Q.mean_bits(_model()) is None


# -- recipes end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat-run")
    return run_recipe(parse_recipe(BASE + VARIANT_ROWS), out), out


def test_qat_variant_rows_reload_exactly_what_was_frozen(variant_run):
    result, out = variant_run
    assert [r["method"] for r in result.rows] == ["float", "ste", "lsq", "diffq", "nested"]
    for row, detail in zip(result.rows, result.details, strict=True):
        assert detail["accuracy_before_save"] == row["accuracy"]  # reloaded file == frozen model in memory
        assert evaluate_file(out / row["file"])["accuracy"] == row["accuracy"]
    by = {r["method"]: r for r in result.rows}
    assert (by["ste"]["bits"], by["lsq"]["bits"]) == (2, 3)
    for name in ("diffq", "nested"):
        bits = by[name]["bits"]
        assert isinstance(bits, float) and 2 <= bits < 16 and bits == round(bits, 2)
        meta = ckpt.read(out / by[name]["file"]).metadata
        assert meta["metrics"]["bits"] == bits and meta["variant"]["method"] == name
        assert evaluate_file(out / by[name]["file"])["bits"] == bits
    assert by["diffq"]["bits"] < 8  # the size penalty lowered the widths from init_bits = 8
    for name in ("ste", "lsq", "diffq", "nested"):
        assert by[name]["file_bytes"] < by["float"]["file_bytes"]


def test_qat_variant_files_hold_quantized_tensors(variant_run):
    _, out = variant_run
    entries = ckpt.read(out / "lsq-w3.safetensors").entries
    assert isinstance(entries["fc1.weight"], QuantizedTensor) and entries["fc1.weight"].bits == 3
    assert entries["fc1.weight"].method == "lsq"
    nested = ckpt.read(out / "nested.safetensors").entries
    assert isinstance(nested["fc1.bias"], QuantizedTensor)  # the nested layer quantizes biases too


def test_qat_recipe_trains_the_quantized_model_itself(tmp_path):
    text = BASE + '[qat]\nmethod = "lsq"\nbits = 4\nbits_overrides = { "fc2.weight" = 8 }\n'
    result = run_recipe(parse_recipe(text), tmp_path)
    assert len(result.rows) == 1
    row = result.rows[0]
    assert (row["method"], row["file"]) == ("lsq", "model.safetensors")
    assert row["bits"] == round((64 * 16 * 4 + 160 * 8) / 1184, 2)  # bits per quantized weight, 2 decimals
    entries = ckpt.read(tmp_path / "model.safetensors").entries
    assert entries["fc1.weight"].bits == 4 and entries["fc2.weight"].bits == 8
    assert row["accuracy"] == result.test["accuracy"]  # reloaded file == the frozen trained model
    again = evaluate_file(tmp_path)
    assert (again["method"], again["bits"], again["accuracy"]) == ("lsq", row["bits"], row["accuracy"])
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["qat"]["method"] == "lsq" and training["qat"]["true_size_mb"] > 0
    assert all("qat" in h["extra"] for h in result.history)


def test_qat_with_satnl_bakes_both_in(tmp_path):
    recipe = parse_recipe(BASE + '[satnl]\n\n[qat]\nmethod = "ste"\nbits = 4\n')
    trained = train_recipe(recipe, tmp_path)
    model = trained.model
    x = trained.splits.test.tensors[0][:16]
    loaded = type(model)((1, 8, 8), 10, (16,))
    ckpt.load(tmp_path / "model.safetensors", loaded)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert all(torch.unique(row).numel() <= 16 for row in loaded.fc1.weight)  # 4 bits per output channel
