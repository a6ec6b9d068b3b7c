"""torchao in the peers table: ``quantize_`` with the weight-only configs (int8; int4 through
``IntxWeightOnlyConfig``, since the packed int4 configs do not run on this CPU model: attempted, error recorded) and
PT2E static W8A8 with ``X86InductorQuantizer``.

Artifacts: the weight-only models' state dicts (tensor subclasses: ``torch.load(weights_only=False)`` +
``load_state_dict(assign=True)`` into a fresh LeNet); the PT2E graph via ``torch.export.save`` / ``load``. Install
and driving notes: benchmarks/envs/README.md, benchmarks/peer_checks/check_torchao.py.
"""

from __future__ import annotations

import torch
from peer_checks.check_torchao import _pt2e_quantize, _pt2e_save_reload
from torch import nn

from .common import Bench, Row, accuracy, fresh_copy, inspect, max_logit_diff, timed, torch_tensors
from .plan import SETTINGS, Method


def _config(key: str):
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerAxis

    if key == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if key == "intx_int4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0))
    if key == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=32)
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=32)


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    from torchao.quantization import quantize_

    wbits = SETTINGS[setting][0]
    numels = bench.layer_numels()
    path = bench.artifact("torchao") / f"{method.key}.{'pt2' if method.key == 'pt2e_x86' else 'pt'}"
    if method.key == "pt2e_x86":
        q, row.seconds, row.mse_seconds = timed(lambda: _pt2e_quantize(bench), baseline, bench.options["rounds"],
                                                warmup=True)
        row.acc = accuracy(q, bench.x_test, bench.y_test, set_eval=False)
        loaded, program = _pt2e_save_reload(q, bench, path)
        row.artifact = "torch.export.save of the converted program (.pt2)"
        row.note = "int8 _frozen_param weights; torch.compile (inductor, freezing) lowers it to int8 kernels"
        tensors = torch_tensors({**program.state_dict, **program.constants})
    else:
        def quantize():
            q = fresh_copy(bench.model)
            quantize_(q, _config(method.key), filter_fn=lambda m, _: isinstance(m, nn.Linear))
            plain = [m for m in q.modules() if isinstance(m, nn.Linear) and type(m.weight) in (torch.Tensor,
                                                                                               nn.Parameter)]
            if len(plain) == sum(isinstance(m, nn.Linear) for m in q.modules()):
                group = getattr(_config(method.key), "group_size", None)
                raise RuntimeError(
                    f"quantize_ returned with every Linear weight still float (in_features "
                    f"{', '.join(str(m.in_features) for m in plain)} not multiples of group_size {group}: torchao "
                    "skips such layers with an INFO log message 'Skipping quantizing weight ...')")
            return q

        q, row.seconds, row.mse_seconds = timed(quantize, baseline, bench.options["rounds"], warmup=True)
        row.acc = accuracy(q, bench.x_test, bench.y_test)
        torch.save(q.state_dict(), path)
        state = torch.load(path, weights_only=False)  # tensor subclasses
        loaded = bench.build()
        loaded.load_state_dict(state, assign=True)
        row.artifact = "torch.save state_dict of tensor subclasses (pickle)"
        row.note = "quantize_ acts on Linear layers only: the two convolutions stay float32"
        tensors = torch_tensors(state)
    row.acc_artifact = accuracy(loaded, bench.x_test, bench.y_test, set_eval=False)
    row.reload_diff = max_logit_diff(q, loaded, bench.x_test)
    row.bytes = path.stat().st_size
    inspect(row, tensors, numels, wbits)
