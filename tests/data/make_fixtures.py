"""Write the model files of ``tests/data/`` and their expected outputs (``expected.safetensors``).

They were written ONCE, by learnq at commit fee0b78 (before issue 11 restructured the package), and are the
regression net for "files written by an older learnq still load and compute the same": do not regenerate them
unless the model file format changes on purpose (then keep the old ones as well). Run from the repository root:

    .venv/bin/python tests/data/make_fixtures.py

``expected.safetensors`` holds, per fixture ``name``: ``name.input`` (the probe batch), ``name.output`` (the model
that was saved, in eval mode, on that batch) and ``name.state.<tensor>`` (every tensor of the model as it computes
with it: dequantized weights, folded biases, BatchNorm buffers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fixture_models import BUILDERS, inputs  # noqa: E402

import learnq  # noqa: E402
from learnq.act import insert_activation_quantizers  # noqa: E402
from learnq.quantized import plain_state  # noqa: E402


def _train(model: torch.nn.Module, handle, steps: int = 12, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    params, _ = handle.split_parameters()
    opt = torch.optim.Adam([{"params": params}, *handle.param_groups()], lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + handle.loss()
        loss.backward()
        opt.step()
    model.eval()


def ptq_w4a8_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BUILDERS["ptq_w4a8_bn"]()
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(4):
            model(torch.randn(32, 1, 6, 6) * 2 + 0.5)
    model.eval()
    calib = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return learnq.ptq.quantize(model, calib, method="minmax", wbits=4, abits=8, bias_correction=True,
                               progress=False).model


def qat_ste_pact_observer() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BUILDERS["qat_ste_pact_observer"]()
    insert_activation_quantizers(model, bits=4, method="pact", after=torch.nn.ReLU, init_clip=3.0)
    insert_activation_quantizers(model, bits=5, method="observer", after=torch.nn.ReLU6)
    handle = learnq.prepare(model, learnq.STE(bits=3))
    _train(model, handle)
    handle.freeze()
    return model


def qat_diffq() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BUILDERS["qat_diffq"]()
    handle = learnq.prepare(model, learnq.DiffQ(group_size=4, penalty=5.0))
    _train(model, handle)
    handle.freeze()
    return model


def qat_nested() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BUILDERS["qat_nested"]()
    handle = learnq.prepare(model, learnq.Nested(init_bits=6, gamma_bins=1e-3))
    _train(model, handle)
    return model  # saved with the live quantizers (export_quantized), not frozen


def ptq_tied_mse_w3() -> torch.nn.Module:
    torch.manual_seed(0)
    model = BUILDERS["ptq_tied_mse_w3"]()
    calib = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    return learnq.ptq.quantize(model, calib, method="mse", wbits=3, abits=32, granularity="tensor",
                               progress=False).model


MAKERS = {"ptq_w4a8_bn": ptq_w4a8_bn, "qat_ste_pact_observer": qat_ste_pact_observer, "qat_diffq": qat_diffq,
          "qat_nested": qat_nested, "ptq_tied_mse_w3": ptq_tied_mse_w3}


def main() -> None:
    torch.set_num_threads(1)
    expected: dict[str, torch.Tensor] = {}
    for name, make in MAKERS.items():
        model = make()
        model.eval()
        x = inputs()
        with torch.no_grad():
            expected[f"{name}.input"] = x
            expected[f"{name}.output"] = model(x).contiguous()
            for key, value in plain_state(model).items():
                expected[f"{name}.state.{key}"] = value.detach().clone().contiguous()
        learnq.save(model, HERE / f"{name}.safetensors", metadata={"fixture": name})
        print(name, (HERE / f"{name}.safetensors").stat().st_size, "bytes")
    safetensors.torch.save_file(expected, str(HERE / "expected.safetensors"), metadata={"written_by": "fee0b78"})


if __name__ == "__main__":
    main()
