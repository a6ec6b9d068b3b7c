"""diffq (the DiffQ paper's reference implementation): DiffQuantizer training and its bit-packed state.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy

import torch
from peers_smoke import Setup, accuracy, build_lenet, disk_bytes
from torch import nn


def import_diffq():
    import diffq  # noqa: F401


def run_diffq(s: Setup, rec) -> None:
    import diffq

    with rec.check("diffq", "DiffQuantizer 2 epochs, packed state") as row:
        q = copy.deepcopy(s.model)
        skip = [n for n, p in q.named_parameters() if p.numel() % 8]  # as benchmarks/qat.py: groups must divide
        opt = torch.optim.Adam(q.parameters(), lr=1e-3)  # the package wants the optimizer first
        quantizer = diffq.DiffQuantizer(q, min_size=0.0, group_size=8, exclude=["bias", *skip])
        quantizer.setup_optimizer(opt)
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            q.train()
            perm = torch.randperm(len(s.y_train), generator=gen)
            for i in range(0, len(perm), 64):
                idx = perm[i : i + 64]
                loss = nn.functional.cross_entropy(q(s.x_train[idx]), s.y_train[idx]) + 1e-3 * quantizer.model_size()
                opt.zero_grad()
                loss.backward()
                opt.step()
        q.eval()
        row.acc = accuracy(q, s.x_test, s.y_test)
        path = s.artifact("diffq") / "diffq.pt"
        torch.save(quantizer.get_quantized_state(packed=True), path)
        fresh = build_lenet((1, 8, 8), 10)
        diffq.restore_quantized_state(fresh, torch.load(path, weights_only=False))
        row.acc_artifact = accuracy(fresh, s.x_test, s.y_test)
        row.bytes = disk_bytes(path)
        row.stores = f"bit-packed codes (diffq bitpack), true model size {quantizer.true_model_size():.4f} MB"
        row.note = f"group 8; float (numel % 8 != 0): {', '.join(skip)}"
