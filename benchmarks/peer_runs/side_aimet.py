"""AIMET (aimet-torch) in the peers table: QuantSim ``post_training_tf_enhanced`` with the per-channel config,
AdaRound followed by QuantSim, and QAT on the QuantSim model (``training_range_learning_with_tf_init``).

Artifact: ``aimet_torch.onnx.export(..., prequantize_constants=True, opset_version=21)``, a QDQ ONNX with integer
weight initializers, run by onnxruntime. Where that export or onnxruntime fails (4-bit activations: onnxruntime
refuses uint4 into MaxPool; 2-bit weights: opset 21 has no int2), the artifact is AIMET's other reloadable form:
the float weights (safetensors) plus ``save_encodings_to_json``, reloaded with ``QuantizationSimModel.load_encodings``
on a fresh LeNet. Install and driving notes: benchmarks/envs/README.md, benchmarks/peer_checks/check_aimet.py.
"""

from __future__ import annotations

import copy
import json

import torch
from peer_checks.check_aimet import _aimet_config

from .common import (
    Bench,
    Row,
    accuracy,
    files_bytes,
    inspect,
    max_logit_diff,
    onnx_files,
    onnx_tensors,
    timed,
    torch_tensors,
    train,
)
from .plan import SETTINGS, Method


def _scheme(qat: bool):
    from aimet_torch.common.defs import QuantScheme

    return QuantScheme.training_range_learning_with_tf_init if qat else QuantScheme.post_training_tf_enhanced


def _sim(model, bench: Bench, wbits: int, abits: int, qat: bool = False):
    from aimet_torch.quantsim import QuantizationSimModel

    return QuantizationSimModel(model, bench.x_test[:1], quant_scheme=_scheme(qat), default_param_bw=wbits,
                                default_output_bw=abits, config_file=_aimet_config())


def _calibrate(bench: Bench):
    def forward(model, _=None):
        with torch.no_grad():
            for x in bench.calib_batches():
                model(x)

    return forward


def ort_logits(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def save_reload(bench: Bench, row: Row, sim, name: str, wbits: int, abits: int, qat: bool) -> None:
    from aimet_torch import onnx as aimet_onnx
    from safetensors.torch import load_file, save_file

    row.acc = accuracy(sim.model, bench.x_test, bench.y_test)
    numels = bench.layer_numels()
    d = bench.artifact(f"aimet_{name}")
    path = d / f"{name}.onnx"
    try:
        aimet_onnx.export(sim.model, (bench.x_test[:1],), str(path), prequantize_constants=True, opset_version=21,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        logits = ort_logits(path, bench.x_test)
        row.acc_artifact = float((logits.argmax(1) == bench.y_test).float().mean())
        with torch.no_grad():
            row.reload_diff = float((logits - sim.model(bench.x_test)).abs().max())
        files, unused = onnx_files(path)
        row.bytes = files_bytes(files)
        row.artifact = (f"QDQ ONNX, prequantized weights, opset 21: .onnx {files[0].stat().st_size} B + external "
                        "data " + " + ".join(f"{f.stat().st_size} B" for f in files[1:]))
        if unused:
            row.note += (f"{unused} B of the referenced data files are not referenced by any initializer (the "
                         "exporter's float weights, left in the file that also holds a small constant); ")
        inspect(row, onnx_tensors(path), numels, wbits)
        return
    except Exception as exc:  # the documented failures (module docstring): fall back to encodings
        first = (str(exc).strip().splitlines() or [""])[0]
        row.note += f"QDQ ONNX export/run failed ({type(exc).__name__}: {first[:160]}); "
    d = bench.artifact(f"aimet_{name}_encodings")
    keys = set(bench.build().state_dict())
    state = {k: v.detach().contiguous() for k, v in sim.model.state_dict().items() if k in keys}
    save_file(state, str(d / "weights.safetensors"))
    sim.save_encodings_to_json(str(d), "encodings")
    fresh = bench.build()
    fresh.load_state_dict(load_file(str(d / "weights.safetensors")))
    sim2 = _sim(fresh, bench, wbits, abits, qat)
    sim2.load_encodings(json.loads((d / "encodings.json").read_text()))
    row.acc_artifact = accuracy(sim2.model, bench.x_test, bench.y_test)
    row.reload_diff = max_logit_diff(sim.model, sim2.model, bench.x_test)
    files = sorted(d.iterdir())
    row.bytes = files_bytes(files)
    row.artifact = "float weights (.safetensors) + encodings JSON, reloaded with load_encodings"
    row.note += "artifact: float weights + encodings"
    inspect(row, torch_tensors(load_file(str(d / "weights.safetensors"))), numels, wbits)


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters

    wbits, abits, qat, _ = SETTINGS[setting]
    forward = _calibrate(bench)

    def quantsim():
        sim = _sim(copy.deepcopy(bench.model), bench, wbits, abits)
        sim.compute_encodings(forward)
        return sim

    def adaround():
        its = bench.options["adaround_iterations"]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bench.x_calib, bench.y_calib),
                                             batch_size=32)
        params = AdaroundParameters(data_loader=loader, num_batches=len(loader), default_num_iterations=its)
        d = bench.artifact(f"aimet_adaround_state_{setting}")
        ada = Adaround.apply_adaround(copy.deepcopy(bench.model), bench.x_test[:1], params, path=str(d),
                                      filename_prefix="adaround", default_param_bw=wbits,
                                      default_quant_scheme=_scheme(False), default_config_file=_aimet_config())
        sim = _sim(ada, bench, wbits, abits)
        sim.set_and_freeze_param_encodings(str(d / "adaround.encodings"))
        sim.compute_encodings(forward)
        return sim

    def qat_run():
        sim = _sim(copy.deepcopy(bench.model), bench, wbits, abits, qat=True)
        sim.compute_encodings(forward)
        train(sim.model, bench, sim.model.parameters())
        return sim

    fn = {"quantsim": quantsim, "adaround": adaround, "qat": qat_run}[method.key]
    rounds = bench.options["rounds"] if method.fast else 1
    sim, row.seconds, row.mse_seconds = timed(fn, baseline, rounds, warmup=method.fast)
    if method.key == "adaround":
        row.extra["iterations"] = bench.options["adaround_iterations"]
        row.note = f"{bench.options['adaround_iterations']} iterations per layer, batch 32; "
    if qat:
        row.note = f"{bench.options['qat_epochs']} epochs from the float model; "
    save_reload(bench, row, sim, f"{method.key}_{setting}", wbits, abits, qat)
