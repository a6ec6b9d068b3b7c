"""optimum-quanto in the peers table: ``quantize(weights=qintB, activations=qint8|None)``, ``Calibration`` over the
512 images (``streamline=False``: streamlining disables output quantizers in memory and is not saved), ``freeze``;
QAT: the quantized model trained before ``freeze`` (quanto's QAT: straight-through weights, calibrated activation
scales).

Artifact: ``safetensors`` of the state dict + ``quantization_map()`` JSON, reloaded with ``requantize`` into a fresh
LeNet. Install and driving notes: benchmarks/envs/README.md, benchmarks/peer_checks/check_quanto.py.
"""

from __future__ import annotations

import json

import torch

from .common import Bench, Row, accuracy, fresh_copy, inspect, max_logit_diff, timed, torch_tensors, train
from .plan import SETTINGS, Method


def _qtype(bits: int):
    from optimum.quanto import qint2, qint4, qint8

    return {2: qint2, 4: qint4, 8: qint8}[bits]


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    from optimum.quanto import Calibration, freeze, quantization_map, quantize, requantize
    from safetensors.torch import load_file, save_file

    wbits, abits, qat, _ = SETTINGS[setting]

    def run_quanto():
        q = fresh_copy(bench.model)
        quantize(q, weights=_qtype(wbits), activations=None if abits == 32 else _qtype(abits))
        if abits != 32:
            with torch.no_grad(), Calibration(streamline=False):
                for x in bench.calib_batches():
                    q(x)
        if qat:
            train(q, bench, q.parameters())
        freeze(q)
        return q.eval()

    rounds = bench.options["rounds"] if method.fast else 1
    q, row.seconds, row.mse_seconds = timed(run_quanto, baseline, rounds, warmup=method.fast)
    row.acc = accuracy(q, bench.x_test, bench.y_test)
    d = bench.artifact("quanto")
    st, qmap = d / f"{method.key}_{setting}.safetensors", d / f"{method.key}_{setting}.json"
    save_file(q.state_dict(), str(st))
    qmap.write_text(json.dumps(quantization_map(q)))
    fresh = bench.build()
    requantize(fresh, load_file(str(st)), json.loads(qmap.read_text()))
    row.acc_artifact = accuracy(fresh, bench.x_test, bench.y_test)
    row.reload_diff = max_logit_diff(q, fresh, bench.x_test)
    row.bytes = st.stat().st_size + qmap.stat().st_size
    row.artifact = "safetensors state dict + quantization_map JSON, reloaded with requantize"
    row.note = "per-channel weights (axis 0); activations per tensor" + (
        f"; {bench.options['qat_epochs']} epochs from the float model" if qat else "")
    inspect(row, torch_tensors(load_file(str(st))), bench.layer_numels(), wbits)


def warm_up(bench: Bench) -> None:
    """quanto JIT-compiles its C++ extension on the first qint4 use: once, untimed, before any row."""
    from optimum.quanto import freeze, qint4, quantize

    q = fresh_copy(bench.model)
    quantize(q, weights=qint4)
    freeze(q)
    q(bench.x_test[:2])
