"""The typed PTQ config (learnq.PTQ, learnq/ptq/config.py): validation, JSON round trip, the keyword convenience,
and one object with the same defaults behind Python, recipes and the CLI, recorded in the model file."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import learnq
from learnq.attach import Selection
from learnq.errors import ConfigError, QuantizationError
from learnq.fields.ptq_config import KEY
from learnq.pipeline.ptq_variants import PTQ_OPTIONS
from learnq.pipeline.sections import VariantSection
from learnq.ptq import PTQ, quantize


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_defaults_validation_and_json_round_trip():
    c = PTQ()
    assert (c.method, c.wbits, c.abits, c.granularity, c.scheme) == ("minmax", 8, 8, "channel", "symmetric")
    lp = PTQ(method="lp", wbits=4, abits=32, selection={"skip_last": True})
    assert lp.options == {"p": 2.0} and lp.selection == Selection(skip_last=True)  # options completed
    assert lp.weight_spec().bits == 4 and lp.act_bits() is None and str(lp.weight_spec().granularity) == "axis:0"
    assert not lp.skips_first_last() and PTQ(method="lapq").skips_first_last()
    d = lp.to_dict()
    assert d["version"] == 1 and d["selection"]["skip_last"] is True
    assert PTQ.from_dict(d) == lp
    with pytest.raises(ConfigError, match="unknown PTQ method 'nope'"):
        PTQ(method="nope")
    with pytest.raises(ConfigError, match=r"options\.q: unknown option.*no option 'q'"):
        PTQ(method="lp", options={"q": 1})
    with pytest.raises(ConfigError, match="nothing to quantize"):
        PTQ(wbits=32, abits=32)
    with pytest.raises(QuantizationError, match="abits"):
        PTQ(abits=17)
    with pytest.raises(ConfigError, match="scheme"):
        PTQ(scheme="cubic")
    with pytest.raises(ConfigError, match="skip_first_last"):
        PTQ(skip_first_last="yes")
    with pytest.raises(ConfigError, match="version"):
        PTQ.from_dict({**d, "version": 2})
    with pytest.raises(ConfigError, match="no field"):
        PTQ.from_dict({**d, "bits": 4})


def test_keywords_are_the_same_config_and_the_file_records_it(tmp_path):
    x = torch.randn(32, 6)
    by_keywords = quantize(_model(), x, method="lp", wbits=4, abits=8, p=3.0, progress=False)
    config = PTQ(method="lp", wbits=4, abits=8, options={"p": 3.0})
    by_config = quantize(_model(), x, config, progress=False)
    assert by_keywords.config == config == by_config.config
    with torch.no_grad():
        assert torch.equal(by_keywords.model(x), by_config.model(x))
    learnq.save(by_config.model, tmp_path / "m.safetensors")
    mf = learnq.load(tmp_path / "m.safetensors")
    assert PTQ.from_dict(mf.metadata[KEY]) == config
    loaded = learnq.load(tmp_path / "m.safetensors", _model())
    learnq.save(loaded, tmp_path / "again.safetensors")  # a loaded model keeps the record
    assert learnq.load(tmp_path / "again.safetensors").metadata[KEY] == mf.metadata[KEY]
    with pytest.raises(ConfigError, match="not both"):
        quantize(_model(), x, config, wbits=4)


def test_same_defaults_in_python_recipes_and_the_cli():
    from learnq.cli import build_parser

    defaults = {f.name: f.default for f in dataclasses.fields(PTQ) if f.default is not dataclasses.MISSING}
    assert {k: v for k, v in PTQ_OPTIONS.items() if k != "calib_samples"} == {
        k: defaults[k] for k in ("bias_correction", "variance_correction", "act_per_channel", "skip_first_last")}
    variant = VariantSection(method="mse")
    assert (variant.granularity, variant.scheme) == (defaults["granularity"], defaults["scheme"])
    args = build_parser().parse_args(["quantize", "some.safetensors"])
    assert (args.method, args.wbits, args.abits, args.granularity, args.bias_correction) == (
        defaults["method"], defaults["wbits"], defaults["abits"], defaults["granularity"], defaults["bias_correction"])


def test_a_recipe_variant_builds_the_same_config():
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from learnq.fields.ptq_config import PTQ_CONFIG_ATTR
    from learnq.pipeline.ptq_variants import apply_ptq

    x = torch.randn(32, 6)
    variant = VariantSection(method="lp", bits=4, abits=8, granularity="tensor",
                             options={**PTQ_OPTIONS, "p": 3.0, "bias_correction": True})
    out = apply_ptq(_model(), SimpleNamespace(calib=TensorDataset(x, torch.zeros(32, dtype=torch.long))), variant, 0,
                    "cpu")
    assert getattr(out, PTQ_CONFIG_ATTR) == PTQ(method="lp", wbits=4, abits=8, granularity="tensor",
                                                bias_correction=True, selection=Selection(),
                                                options={"p": 3.0}).to_dict()
