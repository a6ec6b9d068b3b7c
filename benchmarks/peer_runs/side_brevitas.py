"""Brevitas in the peers table: its ImageNet PTQ recipe (``brevitas_examples...ptq_common``: fx graph
quantization, per-channel weights, stats or MSE scales, bias correction, GPTQ) and QAT with its quantized layers
(``QuantConv2d``/``QuantLinear`` per-channel weights, ``QuantReLU`` 8-bit).

Artifact: ``export_torch_qcdq``, a TorchScript module whose weights are integer constants (one code per int8),
reloaded with ``torch.jit.load``. Brevitas' ONNX export does not work on this LeNet: the TorchScript ONNX exporter
cannot export ``adaptive_avg_pool2d`` from 7x7 to 5x5 ("output size that are not factor of input size") and the
dynamo one refuses quantized biases. Install and driving notes: benchmarks/envs/README.md,
benchmarks/peer_checks/check_brevitas.py.
"""

from __future__ import annotations

import torch
from peer_checks.check_brevitas import _brevitas_layers, _brevitas_ptq

from .common import Bench, Row, accuracy, fresh_copy, inspect, max_logit_diff, tensor_record, timed, train
from .plan import SETTINGS, Method


def torchscript_tensors(module) -> list:
    """The integer and float constants of a TorchScript module (where export_torch_qcdq puts the weights) and its
    state dict."""
    consts = module.code_with_constants[1].const_mapping
    out = [tensor_record(f"constant {k}", v) for k, v in consts.items() if isinstance(v, torch.Tensor)]
    return out + [tensor_record(k, v) for k, v in module.state_dict().items()]


def save_reload(bench: Bench, row: Row, q, name: str, wbits: int) -> None:
    from brevitas.export import export_torch_qcdq

    row.acc = accuracy(q, bench.x_test, bench.y_test)
    path = bench.artifact("brevitas") / f"{name}.pt"
    export_torch_qcdq(q.eval(), args=bench.x_test[:2], export_path=str(path))
    loaded = torch.jit.load(str(path))
    row.acc_artifact = accuracy(loaded, bench.x_test, bench.y_test)
    row.reload_diff = max_logit_diff(q, loaded, bench.x_test)
    row.bytes = path.stat().st_size
    row.artifact = "export_torch_qcdq TorchScript (.pt)"
    inspect(row, torchscript_tensors(loaded), bench.layer_numels(), wbits)


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    wbits, abits, qat, _ = SETTINGS[setting]
    calib = [(x, None) for x in bench.calib_batches()]

    def ptq():
        scales = "stats" if method.key.startswith("stats") else "mse"
        q, pc = _brevitas_ptq(bench, scales, wbits, abits)
        pc.calibrate(calib, q)
        if method.key.endswith("gptq"):
            with torch.no_grad():  # GPTQ refuses weight quantizers that have not seen a forward pass yet
                q(bench.x_calib[:1])
            pc.apply_gptq(calib, q)
        if method.key.endswith("_bc"):
            pc.apply_bias_correction(calib, q)
        return q

    def qat_run():
        from brevitas.quant import Int8WeightPerChannelFloat

        q = _brevitas_layers(fresh_copy(bench.model), wbits, abits, weight_quant=Int8WeightPerChannelFloat)
        return train(q, bench, q.parameters())

    rounds = bench.options["rounds"] if method.fast else 1
    q, row.seconds, row.mse_seconds = timed(qat_run if qat else ptq, baseline, rounds, warmup=method.fast)
    if qat:
        row.note = (f"per-channel weights (Int8WeightPerChannelFloat at {wbits} bits, narrow range), QuantReLU "
                    f"{abits}-bit; {bench.options['qat_epochs']} epochs from the float model")
    else:
        row.note = "ptq_common.quantize_model(backend='fx', per_channel, act percentile 99.999, bias 32-bit)"
    save_reload(bench, row, q, f"{method.key}_{setting}", wbits)
