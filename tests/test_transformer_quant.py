"""Quantizing transformers (issue 16; DiffQ seeds/003 §5.2): QAT on every linear layer and the tied embedding (one
quantizer, one noise sample, stored once), LayerDrop with no bits gradient for dropped blocks, PTQ of attention
projections (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``), MLPs and embeddings with per-channel 8-bit
activations, save/load exact, ONNX in onnxruntime, and ``learnq eval`` of a quantized language model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import learnq
from learnq.act.input_quant import input_quantizers
from learnq.attach import Selection, select_parameters
from learnq.evaluation import evaluate, task_metrics
from learnq.pipeline.models.transformer import build_gpt
from learnq.ptq import PTQ, quantize
from learnq.quantized import quantized_parameters
from learnq.quantizers import resolve_config

VOCAB, BLOCK = 20, 12
ALL = Selection(types=("linear", "embedding", "attention"))


def _gpt(attention: str = "linear", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_gpt((BLOCK,), VOCAB, n_layer=2, n_head=2, n_embd=16, attention=attention, **kw)


def _data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (n, BLOCK), generator=g)
    return TensorDataset(x, torch.roll(x, -1, dims=1))  # a learnable next token: the window shifted


def _ids() -> torch.Tensor:
    return _data().tensors[0]


# -- QAT ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [{"method": "diffq", "group_size": 16}, {"method": "lsq", "bits": 4},
                                    {"method": "ste", "bits": 4}, {"method": "nested"}])
def test_qat_tied_embedding_is_one_quantizer_and_one_stored_tensor(method, tmp_path):
    model = _gpt()
    handle = learnq.prepare(model, resolve_config(method), selection=Selection(types=("linear", "embedding")))
    assert handle.aliases == {"lm_head.weight": "transformer.wte.weight"}
    assert "transformer.wpe.weight" in handle.quantizers  # the position embedding too
    q = handle.quantizers["transformer.wte.weight"]
    assert model.lm_head.parametrizations["weight"][-1] is q  # one quantizer registered on both holders
    ids = _ids()
    seen = {}
    model.lm_head.register_forward_pre_hook(lambda m, a: seen.__setitem__("head", m.weight.detach().clone()))
    model.transformer.wte.register_forward_pre_hook(lambda m, a: seen.__setitem__("wte", m.weight.detach().clone()))
    model.train()
    model(ids[:4])
    assert torch.equal(seen["head"], seen["wte"])  # one noise sample (DiffQ) / one fake-quant value per forward
    model.eval()
    with torch.no_grad():
        before = model(ids)
    handle.freeze()
    path = tmp_path / "m.safetensors"
    report = learnq.save(model, path, report=True)
    assert [t.name for t in report.tensors].count("transformer.wte.weight") == 1
    assert "lm_head.weight" not in [t.name for t in report.tensors]  # counted once
    mf = learnq.load(path)
    assert mf.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert mf.entries["lm_head.weight"] is mf.entries["transformer.wte.weight"]
    fresh = _gpt()
    learnq.load(path, fresh)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids), before)  # bit-exact: same codes, same kernels, same shapes
    assert fresh.lm_head.parametrizations["weight"][-1] is fresh.transformer.wte.parametrizations["weight"][-1]


def test_tied_float_weight_is_stored_once_and_the_file_shrinks_by_it(tmp_path):
    model = _gpt()
    report = learnq.save(model, tmp_path / "m.safetensors", report=True)
    params = sum(p.numel() for p in model.parameters())  # named_parameters counts the tied tensor once
    assert (tmp_path / "m.safetensors").stat().st_size < params * 4 + 4096  # not twice the (20, 16) table
    assert sum(t.numel for t in report.tensors) == params
    fresh = build_gpt((BLOCK,), VOCAB, n_layer=2, n_head=2, n_embd=16)
    learnq.load(tmp_path / "m.safetensors", fresh)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_layer_drop_gives_dropped_blocks_no_bits_gradient():
    model = _gpt(layer_drop=0.999999)  # every block dropped (the chance that one is kept is 2e-6)
    handle = learnq.prepare(model, learnq.DiffQ(group_size=16, penalty=10.0),
                            selection=Selection(types=("linear", "embedding")))
    model.train()
    x, y = _data().tensors
    logits = model(x[:8])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y[:8].flatten()) + handle.loss()
    loss.backward()
    for name, q in handle.quantizers.items():
        grad = q.logits.grad
        if ".h." in name:  # a dropped block: neither the task nor the size penalty moves its bits (seeds/003 §5.2)
            assert grad is None or not grad.any(), name
        else:
            assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():  # eval keeps every block
        kept = model(x[:2])
    model.transformer.layer_drop = 0.0
    with torch.no_grad():
        assert torch.equal(model(x[:2]), kept)


def test_layer_drop_is_checked():
    with pytest.raises(learnq.errors.ConfigError, match="layer_drop"):
        build_gpt((BLOCK,), VOCAB, layer_drop=1.0)


# -- selection and PTQ -------------------------------------------------------------------------------------------
def test_multihead_attention_in_proj_is_selected():
    model = _gpt("mha")
    names = select_parameters(model, Selection())
    assert "transformer.h.0.attn.mha.in_proj_weight" in names and "transformer.h.0.attn.mha.out_proj.weight" in names
    assert "transformer.h.0.attn.mha.in_proj_bias" in select_parameters(model, Selection(biases=True))
    assert not any("in_proj" in n for n in select_parameters(model, Selection(types=("linear",))))


@pytest.mark.parametrize("attention", ["linear", "mha"])
@pytest.mark.parametrize("method", ["minmax", "mse", "adaround", pytest.param("lapq", marks=pytest.mark.slow)])
def test_ptq_of_the_whole_transformer_round_trips(attention, method, tmp_path):
    model = _gpt(attention).eval()
    options = {"adaround": {"iterations": 5}, "lapq": {"maxfev": 30}}.get(method, {})
    result = quantize(model, _data(), PTQ(method=method, wbits=4, abits=8, act_per_channel=True, selection=ALL,
                                          options=options), progress=False)
    qmodel = result.model
    done = dict(quantized_parameters(qmodel))
    if method != "lapq":  # LAPQ leaves the first and last layers (the tied embedding / head) in float
        assert "transformer.wte.weight" in done and "transformer.wpe.weight" in done
    proj = "attn.mha.in_proj_weight" if attention == "mha" else "attn.q.weight"
    assert f"transformer.h.0.{proj}" in done and "transformer.h.1.mlp.fc.weight" in done
    float_layers = [s for s in result.skipped if "LayerNorm" in s]
    assert len(float_layers) == 5 and all("kept in float" in s for s in float_layers)
    acts = input_quantizers(qmodel)
    assert "transformer.h.0.mlp.fc" in acts and acts["transformer.h.0.mlp.fc"].alpha.shape == (16,)  # per feature
    if attention == "mha":
        assert "transformer.h.0.attn.mha" in acts and "transformer.h.0.attn.mha.out_proj" not in acts
    ids = _ids()
    with torch.no_grad():
        out = qmodel(ids)
        ref = model(ids)
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 1.0  # quantized, and close (logits ~ ±0.5)
    path = tmp_path / "m.safetensors"
    learnq.save(qmodel, path)
    fresh = _gpt(attention)
    learnq.load(path, fresh)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids), out)


def test_ptq_of_torch_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(32, 6, 16)
    result = quantize(layer, x, PTQ(method="mse", wbits=8, abits=8, act_per_channel=True), progress=False)
    assert {row["name"] for row in result.layers} == {"self_attn", "self_attn.out_proj", "linear1", "linear2"}
    assert set(dict(quantized_parameters(result.model))) == {"self_attn.in_proj_weight", "self_attn.out_proj.weight",
                                                             "linear1.weight", "linear2.weight"}
    assert sorted(s.split(" ")[0] for s in result.skipped) == ["norm1", "norm2"]
    with torch.no_grad():
        err = (result.model(x) - layer(x)).abs().max()
    # W8A8 of a LayerNorm-ed output of unit scale: a few quantization steps of ~0.01 at most
    assert 0 < err < 0.1


def test_mha_input_quantizer_quantizes_query_key_value_alike():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()  # returns a tuple: wrapped
    x = torch.randn(16, 5, 8)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.mha(t, t, t, need_weights=False)[0]

    model = Wrap().eval()
    q = quantize(model, x, PTQ(method="minmax", wbits=32, abits=4), progress=False).model
    aq = input_quantizers(q)["mha"]
    xq = aq(x)
    with torch.no_grad():
        expected = mha(xq, xq, xq, need_weights=False)[0]  # the same quantized tensor as query, key and value
        assert torch.equal(q(x), expected)


# -- ONNX and eval -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("abits", [8, 32])
def test_onnx_perplexity_matches_learnq(abits, tmp_path):
    pytest.importorskip("onnxruntime")
    from learnq.export.onnx import evaluate_onnx, to_onnx

    data = _data(64)
    model = _gpt()
    result = quantize(model.eval(), data, PTQ(method="mse", wbits=4, abits=abits, act_per_channel=True,
                                              selection=ALL), progress=False)
    path = tmp_path / "m.onnx"
    report = to_onnx(result.model, data.tensors[0][:4], path, opset=17)
    wte = [t for t in report.tensors if t.kind == "weight" and ("wte" in t.name or "lm_head" in t.name)]
    assert [t.name for t in wte] == ["transformer.wte.weight"]  # the tied table once
    ours = task_metrics(evaluate(result.model, data), "language-model")
    theirs = task_metrics(evaluate_onnx(path, data), "language-model")
    # the bound: perplexity within 0.5 % (float32 kernels differ: measured ~1e-6 relative)
    assert math.isclose(theirs["perplexity"], ours["perplexity"], rel_tol=5e-3)
    # a float32 difference can flip an activation code (one step, ~1e-2) on another CPU: no bit-level bound here
    assert report.check["argmax_agreement"] >= 0.9


def test_eval_of_quantized_language_model_from_the_file(tmp_path, capsys):
    from learnq.cli import main
    from learnq.pipeline.recipe import parse_recipe
    from learnq.pipeline.run import run_recipe
    from tests.text_util import write_corpus

    folder = write_corpus(tmp_path / "data")
    recipe = f"""
name = "lmq"
[data]
name = "shakespeare-char"
root = "{folder}"
calib_size = 8
limit = 64
options = {{ block_size = 16 }}
[model]
name = "gpt"
args = {{ n_layer = 1, n_head = 2, n_embd = 16 }}
[train]
epochs = 1
batch_size = 16
lr = 0.01
[[variants]]
method = "float"
[[variants]]
method = "mse"
wbits = 4
abits = 8
[report]
plots = false
"""
    result = run_recipe(parse_recipe(recipe), tmp_path / "run")
    row = next(r for r in result.rows if r["method"] == "mse")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "mse-w4a8.safetensors"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert math.isclose(evaluated["accuracy"], row["accuracy"], rel_tol=1e-9)  # same weights, windows and code
    assert math.isclose(evaluated["perplexity"], math.exp(evaluated["loss"]), rel_tol=1e-12)
    mf = learnq.load(tmp_path / "run" / "mse-w4a8.safetensors")
    assert mf.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert mf.entries["lm_head.weight"].bits == 4  # the tied head / embedding quantized, once
