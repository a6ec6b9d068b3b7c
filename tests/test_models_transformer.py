"""The zoo's transformers: shapes, the causal mask, tied weights, nn.Linear vs nn.MultiheadAttention, padding, the
sequence loss, and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from learnq.evaluation import task_loss, task_metrics

from learnq import load, save
from learnq.errors import ConfigError, ModelError
from learnq.pipeline.data.text_vocab import PAD_ID, VOCAB_SIZE
from learnq.pipeline.models import build_model, model_arguments, model_from_spec, model_spec
from learnq.pipeline.models.attention import MHASelfAttention, SelfAttention

SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 16}


def _gpt(attention="linear", block=12, **kw):
    torch.manual_seed(0)
    return build_model("gpt", (block,), VOCAB_SIZE, attention=attention, **{**SMALL, **kw}).eval()


@pytest.mark.parametrize("attention", ["linear", "mha"])
def test_forward_shapes(attention):
    gpt = _gpt(attention)
    idx = torch.randint(2, VOCAB_SIZE, (3, 12))
    assert gpt(idx).shape == (3, 12, VOCAB_SIZE)
    assert gpt(idx[:, :5]).shape == (3, 5, VOCAB_SIZE)  # shorter than the block size
    clf = build_model("encoder-classifier", (12,), 2, attention=attention, **SMALL).eval()
    assert clf(idx).shape == (3, 2)


@pytest.mark.parametrize("attention", ["linear", "mha"])
def test_output_at_t_does_not_depend_on_later_inputs(attention):
    gpt = _gpt(attention)
    idx = torch.randint(2, VOCAB_SIZE, (2, 12))
    t = 6
    other = idx.clone()
    other[:, t + 1:] = torch.randint(2, VOCAB_SIZE, (2, 12 - t - 1))
    with torch.no_grad():
        a, b = gpt(idx), gpt(other)
    # masked keys get exactly zero weight, but the attention kernel may block its sums differently: 1e-6 of logits ~1
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-3  # later positions do see the change


def test_encoder_sees_the_whole_line_but_not_the_padding():
    torch.manual_seed(0)
    clf = build_model("encoder-classifier", (16,), 2, **SMALL).eval()
    line = torch.randint(2, VOCAB_SIZE, (1, 10))
    padded = torch.cat([line, torch.full((1, 6), PAD_ID)], dim=1)
    with torch.no_grad():
        # different sequence lengths run different kernels: 1e-5 absolute on logits of size ~0.1
        torch.testing.assert_close(clf(padded), clf(line), rtol=0, atol=1e-5)
        changed = line.clone()
        changed[0, -1] = (changed[0, -1] + 1 - 2) % (VOCAB_SIZE - 2) + 2  # another real character at the end
        assert (clf(changed) - clf(line)).abs().max() > 1e-6  # not causal: the last token matters


def test_embedding_and_head_are_one_parameter_and_stay_tied_through_a_file(tmp_path):
    gpt = _gpt()
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    names = [n for n, _ in gpt.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # listed once
    total = sum(p.numel() for p in gpt.parameters())
    assert total == sum(p.numel() for n, p in gpt.named_parameters(remove_duplicate=False)) - VOCAB_SIZE * 16
    save(gpt, tmp_path / "m.safetensors")
    fresh = _gpt()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load(tmp_path / "m.safetensors", fresh)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    for (n, p), (_, q) in zip(gpt.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_linear_and_multihead_attention_compute_the_same_function():
    torch.manual_seed(0)
    lin = SelfAttention(16, 4, 0.0, True).eval()
    mha = MHASelfAttention(16, 4, 0.0, True).eval()
    with torch.no_grad():
        mha.mha.in_proj_weight.copy_(torch.cat([lin.q.weight, lin.k.weight, lin.v.weight]))
        mha.mha.in_proj_bias.copy_(torch.cat([lin.q.bias, lin.k.bias, lin.v.bias]))
        mha.mha.out_proj.weight.copy_(lin.out.weight)
        mha.mha.out_proj.bias.copy_(lin.out.bias)
        x = torch.randn(3, 7, 16)
        mask = torch.ones(3, 7, dtype=torch.bool)
        mask[1, 4:] = False
        # two implementations, different kernels: float32 sums of 16 terms of size ~1
        for causal, key_mask in ((True, None), (False, None), (False, mask)):
            torch.testing.assert_close(lin(x, causal, key_mask), mha(x, causal, key_mask), rtol=1e-5, atol=1e-5)


def test_sequence_loss_and_token_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]])  # (2, 2, 3)
    target = torch.tensor([[0, 2], [2, 1]])
    loss, correct = task_loss(logits, target)
    by_hand = [-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2)),
               -math.log(math.exp(3) / (math.exp(3) + 2)), -math.log(1 / (math.e + 2))]
    assert math.isclose(loss.item(), sum(by_hand) / 4, rel_tol=1e-6)
    assert math.isclose(correct.item(), 0.5 + 0.5)  # one of two right in each sequence
    metrics = task_metrics({"loss": 1.5, "accuracy": 0.25, "n": 2}, "language-model")
    assert math.isclose(metrics["bits_per_char"], 1.5 / math.log(2)) and math.isclose(metrics["perplexity"],
                                                                                         math.exp(1.5))
    assert task_metrics({"loss": 1.5, "accuracy": 0.25, "n": 2}, "classification") == {"loss": 1.5,
                                                                                       "accuracy": 0.25, "n": 2}


def test_training_step_lowers_the_loss_and_reaches_every_parameter():
    gpt = _gpt().train()
    idx = torch.randint(2, VOCAB_SIZE, (4, 12))
    loss = F.cross_entropy(gpt(idx).flatten(0, 1), idx.roll(-1, dims=1).flatten())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gpt.parameters())
    assert math.isclose(loss.item(), math.log(VOCAB_SIZE), rel_tol=0.05)  # N(0, 0.02) init: near-uniform output


def test_spec_round_trip_and_defaults():
    spec = model_spec("gpt", [64], VOCAB_SIZE, n_layer=1)
    assert spec["kwargs"] == {"n_layer": 1, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": True,
                              "attention": "linear"}
    a, b = model_from_spec(spec), model_from_spec(spec)
    assert list(a.state_dict()) == list(b.state_dict())
    assert model_arguments("encoder-classifier")["vocab_size"] == VOCAB_SIZE
    default = build_model("gpt", (128,), VOCAB_SIZE)
    assert sum(p.numel() for p in default.parameters()) == 822_272  # 4 layers x 128: the recipe's model


def test_bad_arguments_and_inputs():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_model("gpt", (8,), 10, n_embd=10, n_head=4)
    with pytest.raises(ConfigError, match="attention"):
        build_model("gpt", (8,), 10, attention="flash")
    with pytest.raises(ConfigError, match=r"input_shape must be \(block_size,\)"):
        build_model("encoder-classifier", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("gpt", (8,), 10, dropout=1.0)
    with pytest.raises(ConfigError, match="pad_id"):
        build_model("encoder-classifier", (8,), 2, pad_id=500)
    gpt = _gpt(block=8)
    with pytest.raises(ModelError, match="longer than the model's block size 8"):
        gpt(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ModelError, match="token ids"):
        gpt(torch.zeros(1, 8))
