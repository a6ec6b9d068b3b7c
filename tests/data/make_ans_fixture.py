"""Write ``tests/data/ans_v1.safetensors``: a model file whose codes are rANS-coded (grid ``"codec": ["ans", 1]``),
written ONCE by learnq at commit 2ee0fdc, before pcodec joined the entropy coder (issue 18). It is the regression net
for "files written with codec='ans' before the per-tensor coder choice still load"; do not regenerate it. Run with
that commit's package on the path, e.g.

    git archive 2ee0fdc learnq | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/make_ans_fixture.py

The tensors are :func:`ans_fixture_entries` (deterministic): ``w``, 4-bit bell-shaped codes, one stream;
``d``, DiffQ-style per-group widths 2..5 with a value range (four streams); ``one``, 600 codes of one value (a
stream of zero coded bytes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def ans_fixture_entries() -> dict:
    from learnq.granularity import Granularity
    from learnq.grid import QuantizedTensor, range_group_params

    g = torch.Generator().manual_seed(18)  # integers only: randn's values depend on the CPU kernels (test-portable)
    codes = (torch.randint(0, 4, (3000, 4), generator=g).sum(dim=1) - 6).to(torch.int32)  # bell-shaped, -6..6
    w = QuantizedTensor(codes=codes.reshape(60, 50), scale=torch.full((1,), 0.25), offset=torch.zeros(1),
                        granularity=Granularity(), bits=4, qmin=-8)
    x = torch.randint(-100, 101, (32, 48, 4), generator=g).sum(dim=2).float() / 100  # bell-shaped; exact division
    gran = Granularity.parse("group:48")
    widths = torch.tensor([2, 3, 4, 5] * 8, dtype=torch.uint8)
    lo, hi = torch.aminmax(x)
    params = range_group_params(lo, hi, widths)
    step, top = gran.expand(params.scale, x.shape), gran.expand(2 ** widths.to(torch.int64) - 1, x.shape)
    dcodes = torch.minimum(torch.round((x - lo) / step).clamp(min=0), top.float()).to(torch.int32)
    d = QuantizedTensor(codes=dcodes, scale=params.scale, offset=params.offset, granularity=gran, bits=8,
                        scheme="affine", method="diffq", group_bits=widths, value_range=torch.stack([lo, hi]))
    one = QuantizedTensor(codes=torch.full((600,), 5, dtype=torch.int32), scale=torch.ones(1), offset=torch.zeros(1),
                          granularity=Granularity(), bits=4)
    return {"w": w, "d": d, "one": one}


def holder() -> nn.Module:
    m = nn.Module()
    m.w, m.d = nn.Parameter(torch.zeros(60, 50)), nn.Parameter(torch.zeros(32, 48))
    m.one = nn.Parameter(torch.zeros(600))
    return m


if __name__ == "__main__":
    from learnq.checkpoint import save

    save(holder(), HERE / "ans_v1.safetensors", quantized=ans_fixture_entries(), codec="ans")
