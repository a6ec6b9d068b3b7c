"""torchao (PyTorch): quantize_ weight-only int8/int4 configs and PT2E static quantization for X86.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy

import torch
from peers_smoke import Setup, accuracy, build_lenet, disk_bytes, torch_summary, train
from torch import nn


def import_torchao():
    import torchao  # noqa: F401
    from torchao.quantization import quantize_  # noqa: F401


def _ao_save_reload(q: nn.Module, s: Setup, row, name: str, template: nn.Module, x: torch.Tensor) -> None:
    path = s.artifact("torchao") / f"{name}.pt"
    torch.save(q.state_dict(), path)
    sd = torch.load(path, weights_only=False)  # tensor subclasses
    template.load_state_dict(sd, assign=True)
    row.acc_artifact = accuracy(template, x, s.y_test)
    row.bytes, row.stores = disk_bytes(path), torch_summary(sd)


def run_torchao(s: Setup, rec) -> None:
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerAxis,
        quantize_,
    )

    with rec.check("torchao", "quantize_ Int8WeightOnlyConfig") as row:
        q = copy.deepcopy(s.model).eval()
        quantize_(q, Int8WeightOnlyConfig())
        row.acc = accuracy(q, s.x_test, s.y_test)
        _ao_save_reload(q, s, row, "int8wo", build_lenet((1, 8, 8), 10).eval(), s.x_test)
        row.note = "Linear layers only (convs stay float)"
    with rec.check("torchao", "quantize_ Int4WeightOnlyConfig (CPU)", expect_fail="Requires mslk") as row:
        quantize_(copy.deepcopy(s.model).eval(), Int4WeightOnlyConfig(group_size=32))
    with rec.check("torchao", "quantize_ IntxWeightOnlyConfig int4") as row:
        q = copy.deepcopy(s.model).eval()
        quantize_(q, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)))
        row.acc = accuracy(q, s.x_test, s.y_test)
        _ao_save_reload(q, s, row, "intx4wo", build_lenet((1, 8, 8), 10).eval(), s.x_test)
        row.note = "int4 values unpacked, one per int8 byte; Linear layers only"
    with rec.check("torchao", "PrototypeInt4WeightOnly (packed, CPU)") as row:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        # the CPU int4 kernel needs out_features % 16 == 0: no layer of the default LeNet (120, 84, 10) qualifies
        torch.manual_seed(0)
        wide = train(build_lenet((1, 8, 8), 10, hidden=(128, 96)), s.x_train, s.y_train, epochs=20)
        row.extra["float_acc_hidden_128_96"] = accuracy(wide, s.x_test, s.y_test)
        q = copy.deepcopy(wide).eval()
        quantize_(q, PrototypeInt4WeightOnlyConfig(group_size=32),
                  filter_fn=lambda m, _: isinstance(m, nn.Linear) and m.out_features % 16 == 0)
        row.acc = accuracy(q, s.x_test, s.y_test)
        template = build_lenet((1, 8, 8), 10, hidden=(128, 96)).eval()
        _ao_save_reload(q, s, row, "int4_opaque", template, s.x_test)
        row.note = (f"LeNet hidden (128, 96), float {row.extra['float_acc_hidden_128_96']}; fc1, fc2 packed "
                    "2 codes/byte, fc3 (N=10) and convs float")
    with rec.check("torchao", "PT2E X86InductorQuantizer W8A8 static") as row:
        _run_pt2e(s, row)


def _pt2e_quantize(s: Setup):
    """torch.export (dynamic batch) -> prepare_pt2e(X86InductorQuantizer) -> the calibration batches ->
    convert_pt2e, in eval mode."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(copy.deepcopy(s.model).eval(), (s.calib[:64],), dynamic_shapes=(_batch(),)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in s.calib_batches():
            prepared(x)
    return move_exported_model_to_eval(convert_pt2e(prepared))


def _batch() -> dict:
    return {0: torch.export.Dim("batch", max=4096)}


def _pt2e_save_reload(q, s: Setup, path) -> tuple:
    """Save the converted graph with torch.export.save and load it back: (loaded module, exported program)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    example = (s.x_test[:2].clone(),)  # batch 1 would be specialized; clone: .pt2 saves the whole storage
    program = torch.export.export(q, example, dynamic_shapes=(_batch(),))
    torch.export.save(program, str(path))
    return move_exported_model_to_eval(torch.export.load(str(path)).module()), program


def _run_pt2e(s: Setup, row) -> None:
    q = _pt2e_quantize(s)
    row.acc = accuracy(q, s.x_test, s.y_test, set_eval=False)
    path = s.artifact("torchao") / "pt2e_x86.pt2"
    loaded, program = _pt2e_save_reload(q, s, path)
    row.acc_artifact = accuracy(loaded, s.x_test, s.y_test, set_eval=False)
    row.bytes = disk_bytes(path)
    row.stores = torch_summary({**program.state_dict, **program.constants})
    row.note = ("int8 _frozen_param weights, but the float weights stay in the program unused; "
                "torch.compile (inductor, freezing) lowers it to int8 kernels")
