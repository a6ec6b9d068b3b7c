"""Brevitas (AMD/Xilinx): its ImageNet PTQ recipe (stats/MSE scales, GPTQ, bias correction) and QAT layers.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy

import torch
from peers_smoke import (
    Setup,
    accuracy,
    build_lenet,
    disk_bytes,
    onnx_int_range,
    onnx_summary,
    ort_accuracy,
    torch_summary,
    train,
)
from torch import nn


def import_brevitas():
    import brevitas  # noqa: F401
    from brevitas_examples.imagenet_classification.ptq import ptq_common  # noqa: F401


def _brevitas_ptq(s: Setup, method: str, w_bits: int, a_bits: int):
    """Brevitas' own ImageNet PTQ recipe (brevitas_examples ptq_common), fx backend, per-channel weights."""
    from brevitas.graph.quantize import preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq import ptq_common as pc

    q = preprocess_for_quantize(copy.deepcopy(s.model))
    q = pc.quantize_model(q, backend="fx", weight_bit_width=w_bits, act_bit_width=a_bits, bias_bit_width=32,
                          weight_quant_granularity="per_channel", act_quant_percentile=99.999, act_quant_type="sym",
                          scale_factor_type="float_scale", quant_format="int", weight_param_method=method,
                          act_param_method=method)
    return q, pc


def _brevitas_onnx(q, s: Setup, row, name: str) -> None:
    """QCDQ ONNX (TorchScript exporter: the dynamo one refuses quantized biases), run by onnxruntime."""
    from brevitas.export import export_onnx_qcdq

    path = s.artifact("brevitas") / f"{name}.onnx"
    export_onnx_qcdq(q, args=s.x_test[:1], export_path=str(path), opset_version=13, dynamo=False,
                     input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    row.acc_artifact = ort_accuracy(path, s.x_test, s.y_test)
    row.bytes = disk_bytes(path)
    lo, hi = onnx_int_range(path)
    row.stores = f"{onnx_summary(path)} (weight codes in [{lo}, {hi}], one per int8)"


def run_brevitas(s: Setup, rec) -> None:
    calib = [(x, None) for x in s.calib_batches()]
    with rec.check("brevitas", "PTQ stats W4A8 + bias correction") as row:
        q, pc = _brevitas_ptq(s, "stats", 4, 8)
        pc.calibrate(calib, q)
        before = accuracy(q, s.x_test, s.y_test)
        pc.apply_bias_correction(calib, q)
        row.acc = accuracy(q, s.x_test, s.y_test)
        row.note = f"before bias correction {before}"
        _brevitas_onnx(q, s, row, "stats_w4a8_bc")
    with rec.check("brevitas", "PTQ MSE W4A8 + GPTQ + bias correction") as row:
        q, pc = _brevitas_ptq(s, "mse", 4, 8)
        pc.calibrate(calib, q)
        a0 = accuracy(q, s.x_test, s.y_test)
        pc.apply_gptq(calib, q)
        a1 = accuracy(q, s.x_test, s.y_test)
        pc.apply_bias_correction(calib, q)
        row.acc = accuracy(q, s.x_test, s.y_test)
        row.note = f"MSE {a0}, +GPTQ {a1}"
        _brevitas_onnx(q, s, row, "mse_gptq_w4a8_bc")
    with rec.check("brevitas", "QAT W2A8 QuantConv2d/QuantLinear/QuantReLU") as row:
        q = _brevitas_layers(copy.deepcopy(s.model), 2, 8)
        train(q, s.x_train, s.y_train, epochs=5, lr=3e-3)
        row.acc = accuracy(q, s.x_test, s.y_test)
        codes = q.features.conv2.quant_weight().int().unique().tolist()
        path = s.artifact("brevitas") / "qat_w2a8.pt"
        torch.save(q.state_dict(), path)
        fresh = _brevitas_layers(build_lenet((1, 8, 8), 10), 2, 8)
        fresh.load_state_dict(torch.load(path, weights_only=True))
        row.acc_artifact = accuracy(fresh, s.x_test, s.y_test)
        row.bytes, row.stores = disk_bytes(path), torch_summary(fresh.state_dict())
        row.note = f"conv2 integer codes {codes} (narrow range); the state dict holds float weights + scales"


def _brevitas_layers(model: nn.Module, w_bits: int, a_bits: int, **weight_kwargs) -> nn.Module:
    """Swap Conv2d/Linear/ReLU for Brevitas' quantized layers (default per-tensor quantizers), weights kept;
    ``weight_kwargs`` go to QuantConv2d/QuantLinear (e.g. ``weight_quant=Int8WeightPerChannelFloat``)."""
    import brevitas.nn as qnn

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                new = qnn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                      padding=child.padding, bias=child.bias is not None, weight_bit_width=w_bits,
                                      **weight_kwargs)
            elif isinstance(child, nn.Linear):
                new = qnn.QuantLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                      weight_bit_width=w_bits, **weight_kwargs)
            elif isinstance(child, nn.ReLU):
                new = qnn.QuantReLU(bit_width=a_bits)
            else:
                continue
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
            setattr(parent, name, new)
    return model
