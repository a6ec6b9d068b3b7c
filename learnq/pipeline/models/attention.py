"""Multi-head self-attention for the zoo's transformers, in two interchangeable forms.

Vaswani et al. 2017, "Attention is all you need", Sec. 3.2 (Eq. 1: softmax(Q Kᵀ / √d_k) V; Sec. 3.2.2: h heads of
width d_k = n_embd / h, concatenated and projected). ``SelfAttention`` writes the four projections as separate
``nn.Linear`` layers ``q``, ``k``, ``v``, ``out`` (as nanoGPT does with its fused ``c_attn``), so every weight
quantizer of learnq applies to each of them like to any other linear layer. ``MHASelfAttention`` wraps
``nn.MultiheadAttention`` instead (its packed ``in_proj_weight`` (3·n_embd, n_embd) and ``out_proj``), the module
users' own models are built from; ``attention = "mha"`` in a recipe picks it. Both take the same masks and compute
the same function (a test copies the weights of one into the other and compares).

Masks: ``causal`` lets position t attend to positions <= t only (decoder); ``key_mask`` (N, T), True for real tokens,
keeps every query away from padding keys (encoder on padded lines). Softmax and masking stay in float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_KINDS = ("linear", "mha")


class SelfAttention(nn.Module):
    """Multi-head self-attention from four ``nn.Linear`` projections (``q``, ``k``, ``v``, ``out``)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.q = nn.Linear(n_embd, n_embd, bias=bias)
        self.k = nn.Linear(n_embd, n_embd, bias=bias)
        self.v = nn.Linear(n_embd, n_embd, bias=bias)
        self.out = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t, c = x.shape  # batch, sequence length, embedding width (n_embd)
        h = self.n_head
        # (N, T, C) -> (N, T, h, C/h) -> (N, h, T, C/h): one attention per head
        q = self.q(x).view(n, t, h, c // h).transpose(1, 2)
        k = self.k(x).view(n, t, h, c // h).transpose(1, 2)
        v = self.v(x).view(n, t, h, c // h).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (N, T) -> (N, 1, 1, T): over keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal and mask is None)  # (N, h, T, C/h)
        y = y.transpose(1, 2).contiguous().view(n, t, c)  # (N, h, T, C/h) -> (N, T, h, C/h) -> (N, T, C)
        return self.resid_drop(self.out(y))


class MHASelfAttention(nn.Module):
    """The same attention through ``nn.MultiheadAttention`` (batch first; ``in_proj_weight`` holds q, k, v)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(n_embd, n_head, dropout=dropout, bias=bias, batch_first=True)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        attn_mask = None
        if causal:  # (T, T), True where attention is NOT allowed (key after query)
            attn_mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        padding = None if key_mask is None else ~key_mask  # (N, T), True at padding keys
        y, _ = self.mha(x, x, x, attn_mask=attn_mask, key_padding_mask=padding, need_weights=False,
                        is_causal=False)
        return self.resid_drop(y)


def make_attention(kind: str, n_embd: int, n_head: int, dropout: float, bias: bool) -> nn.Module:
    """``SelfAttention`` for ``"linear"``, ``MHASelfAttention`` for ``"mha"`` (the builders check ``kind``)."""
    cls = SelfAttention if kind == "linear" else MHASelfAttention
    return cls(n_embd, n_head, dropout, bias)


__all__ = ["ATTENTION_KINDS", "MHASelfAttention", "SelfAttention", "make_attention"]
