"""The forward clock's hooks on the prepared model are there only while a quantizer trains (issue 12): an eval
forward of a prepared, frozen or loaded model runs without them, and training works as before (one noise sample per
forward for a tied weight)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import learnq
from learnq.quantizers.base import ClockPostHook, ClockPreHook


def _clock_hooks(model: nn.Module) -> int:
    return sum(isinstance(h, (ClockPreHook, ClockPostHook))
               for h in (*model._forward_pre_hooks.values(), *model._forward_hooks.values()))


def test_hooks_follow_train_and_eval_and_go_with_freeze():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    handle = learnq.prepare(model, learnq.DiffQ(group_size=4))
    assert _clock_hooks(model) == 2  # nn.Module starts in training mode
    model.eval()
    assert _clock_hooks(model) == 0
    with torch.no_grad():
        before = model(torch.randn(4, 8))
    model.train()
    assert _clock_hooks(model) == 2
    x = torch.randn(16, 8)
    loss = model(x).sum() + handle.loss()
    loss.backward()
    assert all(q.logits.grad is not None for q in handle.quantizers.values())
    copied = copy.deepcopy(model)  # the copy's hooks drive the copy's clock, not the original's
    pre = next(h for h in copied._forward_pre_hooks.values() if isinstance(h, ClockPreHook))
    assert pre.clock.root is copied
    copied.eval()
    assert _clock_hooks(copied) == 0 and _clock_hooks(model) == 2
    model.eval()
    handle.freeze()
    model.train()
    assert _clock_hooks(model) == 0  # a frozen model has no quantizer left to train
    assert before.shape == (4, 3)


def test_tied_weight_gets_one_noise_sample_per_forward_with_lazy_hooks():
    torch.manual_seed(0)
    emb = nn.Linear(6, 6, bias=False)
    model = nn.Sequential(emb, nn.ReLU(), emb)
    handle = learnq.prepare(model, learnq.DiffQ(group_size=3))
    model.eval()
    model.train()  # hooks removed, then back
    q = next(iter(handle.quantizers.values()))
    seen = []
    original = q.train_forward
    q.train_forward = lambda x: seen.append(1) or original(x)
    model(torch.randn(2, 6))
    assert len(seen) == 1  # one training output for both uses within the forward
