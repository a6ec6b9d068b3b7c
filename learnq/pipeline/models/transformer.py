"""Transformers for text: a GPT-style decoder (character language model) and a small encoder classifier.

The decoder follows GPT-2 (Radford et al. 2019, Sec. 2.3: pre-LayerNorm blocks ``x + attn(ln1(x))``,
``x + mlp(ln2(x))``, a final LayerNorm, residual projections initialised with std 0.02/√(2·n_layer)) as laid out by
Karpathy's nanoGPT: token and learned position embeddings, causal self-attention (Vaswani et al. 2017, Eq. 1;
``attention.py``), a GELU MLP of width 4·n_embd, and an output head *tied* to the token embedding (Press & Wolf 2017):
``lm_head.weight`` and ``wte.weight`` are one ``nn.Parameter``, as in the 16-layer language model of DiffQ (document
003, Sec. 5.2, Table 2), which stresses that such a tied tensor must be quantized as one.

The encoder classifier uses the same blocks without the causal mask: padding keys are masked out, the final states of
the real tokens are averaged (mean pooling) and a linear head gives the class logits.

Inputs are token ids ``(N, T)`` (int64, T <= block_size = ``input_shape[0]``). The decoder returns logits
``(N, T, vocab)`` where ``vocab = num_classes`` (the next-token classes); the classifier returns ``(N, num_classes)``.
Sizes come from the recipe (``n_layer``, ``n_head``, ``n_embd``, ``dropout``; block size and vocabulary from the
data); the defaults train in minutes on 2 CPU cores (docs/text.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.pipeline.data.text_vocab import PAD_ID, VOCAB_SIZE
from learnq.pipeline.models import _checks
from learnq.pipeline.models.attention import ATTENTION_KINDS, make_attention

INIT_STD = 0.02  # GPT-2's initialisation of every linear and embedding weight


class MLP(nn.Module):
    """``fc (n_embd -> 4·n_embd) -> GELU -> proj (-> n_embd) -> dropout``."""

    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; (N, T, C) -> (N, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, attention: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = make_attention(attention, n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal, key_mask)
        return x + self.mlp(self.ln2(x))


class _Trunk(nn.Module):
    """Token + position embeddings, dropout and the blocks, shared by both models (weights named as in nanoGPT)."""

    def __init__(self, vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float,
                 bias: bool, attention: str) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout, bias, attention) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)

    def run(self, idx: torch.Tensor, causal: bool, key_mask: torch.Tensor | None) -> torch.Tensor:
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ModelError(f"the text models take token ids of shape (N, T) and an integer dtype, got "
                             f"{idx.dtype} of shape {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ModelError(f"a sequence of {t} tokens is longer than the model's block size {self.block_size}; "
                             "use sequences of at most block_size tokens (data.options.block_size)")
        pos = torch.arange(t, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (N, T, C) + (T, C) -> (N, T, C)
        for block in self.h:
            x = block(x, causal, key_mask)
        return self.ln_f(x)


def _init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, LayerNorm (1, 0), residual outputs scaled down."""
    residual = INIT_STD / math.sqrt(2 * n_layer)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = residual if name.endswith((".attn.out", ".mlp.proj", ".mha.out_proj")) else INIT_STD
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.normal_(module.in_proj_weight, 0.0, INIT_STD)
            if module.in_proj_bias is not None:
                nn.init.zeros_(module.in_proj_bias)


class GPT(nn.Module):
    """Decoder-only character language model; ``lm_head.weight is transformer.wte.weight`` (tied)."""

    def __init__(self, block_size: int, vocab: int, n_layer: int, n_head: int, n_embd: int, dropout: float,
                 bias: bool, attention: str) -> None:
        super().__init__()
        self.transformer = _Trunk(vocab, block_size, n_layer, n_head, n_embd, dropout, bias, attention)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        _init_weights(self, n_layer)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one Parameter (vocab, n_embd)
        self.input_shape = (block_size,)
        self.num_classes = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer.run(idx, causal=True, key_mask=None)  # (N, T) -> (N, T, C)
        return self.lm_head(x)  # (N, T, C) -> (N, T, vocab)


class EncoderClassifier(nn.Module):
    """Non-causal encoder over padded token ids, mean pooling over the real tokens, linear head."""

    def __init__(self, block_size: int, num_classes: int, vocab: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float, bias: bool, attention: str, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.transformer = _Trunk(vocab, block_size, n_layer, n_head, n_embd, dropout, bias, attention)
        self.head = nn.Linear(n_embd, num_classes, bias=True)
        _init_weights(self, n_layer)
        self.input_shape = (block_size,)
        self.num_classes = num_classes

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        key_mask = idx != self.pad_id  # (N, T), True at real tokens
        x = self.transformer.run(idx, causal=False, key_mask=key_mask)  # (N, T, C)
        weights = key_mask.unsqueeze(-1).to(x.dtype)  # (N, T, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (N, T, C) -> (N, C)
        return self.head(pooled)  # (N, C) -> (N, num_classes)


def _sizes(model: str, input_shape: Any, n_layer: Any, n_head: Any, n_embd: Any, dropout: Any, bias: Any,
           attention: Any) -> tuple[int, int, int, int, float, bool, str]:
    shape = _checks.input_shape(model, input_shape)
    if len(shape) != 1:
        raise ConfigError(f"model {model!r} takes token sequences: input_shape must be (block_size,), got {shape!r}; "
                          "use a text data set (shakespeare-char, bard-or-milton)")
    layers = _checks.positive_int(model, "n_layer", n_layer)
    heads = _checks.positive_int(model, "n_head", n_head)
    width = _checks.positive_int(model, "n_embd", n_embd)
    if width % heads:
        raise ConfigError(f"model {model!r}: n_embd={width} must be a multiple of n_head={heads} (each head gets "
                          "n_embd / n_head features)")
    ok = isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0
    if not ok:
        raise ConfigError(f"model {model!r}: argument 'dropout' must be a number in [0, 1), got {dropout!r}")
    if attention not in ATTENTION_KINDS:
        raise ConfigError(f"model {model!r}: argument 'attention' must be one of {list(ATTENTION_KINDS)} "
                          f"('linear': q/k/v/out nn.Linear layers, 'mha': nn.MultiheadAttention), got {attention!r}")
    return shape[0], layers, heads, width, float(dropout), _checks.flag(model, "bias", bias), attention


def build_gpt(input_shape: Sequence[int], num_classes: int, *, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
              dropout: float = 0.0, bias: bool = True, attention: str = "linear") -> GPT:
    """GPT-style character LM: block size ``input_shape[0]``, vocabulary ``num_classes`` (the data's tokens)."""
    block, layers, heads, width, drop, use_bias, kind = _sizes("gpt", input_shape, n_layer, n_head, n_embd,
                                                               dropout, bias, attention)
    vocab = _checks.num_classes("gpt", num_classes)
    return GPT(block, vocab, layers, heads, width, drop, use_bias, kind)


def build_encoder_classifier(input_shape: Sequence[int], num_classes: int, *, vocab_size: int = VOCAB_SIZE,
                             n_layer: int = 2, n_head: int = 4, n_embd: int = 64, dropout: float = 0.1,
                             bias: bool = True, attention: str = "linear",
                             pad_id: int = PAD_ID) -> EncoderClassifier:
    """Encoder classifier of padded token sequences (``input_shape = (block_size,)``) into ``num_classes``."""
    block, layers, heads, width, drop, use_bias, kind = _sizes("encoder-classifier", input_shape, n_layer, n_head,
                                                               n_embd, dropout, bias, attention)
    classes = _checks.num_classes("encoder-classifier", num_classes)
    vocab = _checks.positive_int("encoder-classifier", "vocab_size", vocab_size)
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab:
        raise ConfigError(f"model 'encoder-classifier': pad_id must be a token id in [0, {vocab}), got {pad_id!r}")
    return EncoderClassifier(block, classes, vocab, layers, heads, width, drop, use_bias, kind, pad_id)


__all__ = ["GPT", "Block", "EncoderClassifier", "MLP", "build_encoder_classifier", "build_gpt"]
