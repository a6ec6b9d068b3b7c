"""DoReFa, Quant-Noise and iPQ through recipes (learnq.pipeline): PACT + DoReFa as a ``[qat]`` table (seeds/000
Table 5), Quant-Noise and iPQ variants fine-tuned from one float model, their options validated naming the key, the
reloaded files computing what the fine-tuned models computed, and their options as sweep knobs."""

from __future__ import annotations

import pytest
from recipe_util import tiny_recipe

from learnq.errors import ConfigError
from learnq.pipeline.model_files import evaluate_file, rebuild
from learnq.pipeline.recipe import load_recipe, parse_recipe
from learnq.pipeline.run import run_recipe
from learnq.quantized import quantized_parameters

BASE = tiny_recipe("tiny-qn", seed=2, limit=240, hidden=(16,), epochs=1, batch_size=32, lr=0.01)

ROWS = """
[[variants]]
method = "quant_noise"
name = "qn4"
bits = 4
granularity = "tensor"
options = { rate = 0.2, block_size = 4, epochs = 1 }

[[variants]]
method = "quant_noise"
name = "qn-ipq"
bits = 4
options = { quantizer = "ipq", rate = 0.2, block_size = 4, epochs = 1 }

[[variants]]
method = "ipq"
bits = 3
options = { block_size = 2, epochs = 1 }
"""


def test_pact_dorefa_qat_table(tmp_path):
    text = BASE + '[qat]\nmethod = "dorefa"\nbits = 2\noptions = { abits = 2, act_method = "pact" }\n'
    result = run_recipe(parse_recipe(text), tmp_path)
    row = result.rows[0]
    assert (row["method"], row["bits"], row["abits"]) == ("dorefa", 2, 2)
    assert row["accuracy"] == result.test["accuracy"]  # the reloaded file == the trained model in memory
    model, _, _ = rebuild(tmp_path)
    qts = dict(quantized_parameters(model))
    assert set(qts) == {"fc1.weight", "fc2.weight"}
    for qt in qts.values():  # DoReFa's grid: 4 levels on [-1, 1]
        assert qt.method == "dorefa" and qt.bits == 2
        assert abs(float(qt.dequantize().abs().max()) - 1) < 1e-6  # q·Δ + offset in float32


def test_variants_reload_exactly_and_store_codebooks(tmp_path):
    result = run_recipe(parse_recipe(BASE + ROWS), tmp_path)
    assert [d["name"] for d in result.details] == ["qn4", "qn-ipq", "ipq-w3"]
    for row, detail in zip(result.rows, result.details, strict=True):
        assert detail["accuracy_before_save"] == row["accuracy"]
        assert evaluate_file(tmp_path / row["file"])["accuracy"] == row["accuracy"]
    model, _, _ = rebuild(tmp_path / "ipq-w3.safetensors")
    qt = dict(quantized_parameters(model))["fc1.weight"]
    assert qt.method == "ipq" and qt.palette.shape == (1, 8, 2)
    qt = dict(quantized_parameters(rebuild(tmp_path / "qn-ipq.safetensors")[0]))["fc1.weight"]
    assert qt.method == "quant_noise" and qt.palette.shape == (1, 16, 4)


@pytest.mark.parametrize(("text", "message"), [
    ('[[variants]]\nmethod = "quant_noise"\nbits = 4\noptions = { rate = 2.0 }\n', r"variants\[0\].*rate"),
    ('[[variants]]\nmethod = "quant_noise"\nbits = 4\noptions = { quantizer = "pq" }\n', r"variants\[0\].*quantizer"),
    ('[[variants]]\nmethod = "quant_noise"\noptions = { rate = 0.1 }\n', r"variants\[0\]\.bits"),
    ('[[variants]]\nmethod = "ipq"\nbits = 4\ngranularity = "group:8"\n', r"variants\[0\]\.granularity"),
    ('[[variants]]\nmethod = "dorefa"\nbits = 2\noptions = { rescale = 1 }\n', r"variants\[0\].*rescale"),
    ('[qat]\nmethod = "dorefa"\nbits = 2\ngranularity = "group:4"\n', r"qat\.granularity"),
])
def test_options_are_validated_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(BASE + text)


SWEEP = ('[[variants]]\nmethod = "quant_noise"\nbits = 4\n\n[sweep]\n[sweep.space]\n'
         '"variant.method" = ["quant_noise", "ipq", "dorefa"]\n"variant.bits" = [2, 4]\n'
         '"variant.options.quantizer" = ["scalar", "ipq"]\n"variant.options.rate" = {{ low = 0.05, high = {high} }}\n')


def test_options_are_sweep_knobs():
    from learnq.pipeline.sweep_space import parse_sweep_recipe

    sweep = parse_sweep_recipe(BASE + SWEEP.format(high=0.5), "r.toml")
    assert {k.path for k in sweep.knobs} >= {"variant.options.rate", "variant.options.quantizer"}
    with pytest.raises(ConfigError, match=r'"variant\.options\.rate".*rate'):  # each end checked by the config
        parse_sweep_recipe(BASE + SWEEP.format(high=1.5), "r.toml")


def test_shipped_recipes_parse():
    for name in ("pact-dorefa-mnist5k", "quant-noise-mnist5k"):
        recipe = load_recipe(f"recipes/{name}.toml")
        assert recipe.name == name


@pytest.mark.parametrize("config", ['learnq.QuantNoise(bits=4, rate=0.1, block_size=8)',
                                    'learnq.QuantNoise(bits=4, rate=0.1, block_size=8, quantizer="ipq")',
                                    'learnq.IPQ(bits=8, block_size=8)', 'learnq.DoReFa(bits=2, rescale=True)'])
def test_docs_example_runs(config, tmp_path, monkeypatch):
    """The Python example of docs/qat.md's section on these methods, with each config of its comment."""
    import re
    from pathlib import Path

    import learnq

    text = (Path(__file__).resolve().parents[1] / "docs" / "qat.md").read_text(encoding="utf-8")
    section = text[text.index("## DoReFa, Quant-Noise and iPQ"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert "learnq.QuantNoise(bits=4, rate=0.1, block_size=8)" in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block.replace("learnq.QuantNoise(bits=4, rate=0.1, block_size=8)", config), namespace)  # noqa: S102
    loaded = learnq.load(tmp_path / "qn.safetensors", namespace["torch"].nn.Sequential(
        namespace["torch"].nn.Linear(16, 32), namespace["torch"].nn.ReLU(), namespace["torch"].nn.Linear(32, 4)))
    x = namespace["x"]
    with namespace["torch"].no_grad():
        assert namespace["torch"].equal(loaded.eval()(x), namespace["model"](x))
