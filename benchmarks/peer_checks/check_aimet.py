"""aimet-torch (Qualcomm): QuantSim tf_enhanced per channel, AdaRound, cross-layer equalization (CLE).

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy
import os

import torch
from peers_smoke import Setup, accuracy, disk_bytes, mobilenet, onnx_summary, ort_accuracy


def import_aimet():
    import torchvision

    if not getattr(torchvision, "STANDIN", False):
        raise RuntimeError("torchvision here is not learnq's stand-in: PyPI's torchvision does not load beside "
                           "torch 2.13.0+cpu (see benchmarks/envs/README.md)")
    from aimet_torch.quantsim import QuantizationSimModel  # noqa: F401


def _aimet_config() -> str:
    import aimet_torch

    return os.path.join(os.path.dirname(aimet_torch.__file__), "common", "quantsim_config",
                        "default_config_per_channel.json")


def _aimet_export(sim, s: Setup, row, name: str) -> None:
    """QDQ ONNX with the weights prequantized (int4 initializers), opset 21, run by onnxruntime."""
    from aimet_torch import onnx as aimet_onnx

    d = s.artifact(f"aimet_{name}")
    path = d / f"{name}.onnx"
    aimet_onnx.export(sim.model, (s.x_test[:1],), str(path), prequantize_constants=True, opset_version=21,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    row.acc_artifact = ort_accuracy(path, s.x_test, s.y_test)
    row.bytes, row.stores = disk_bytes(d), onnx_summary(path)
    files = sorted(f"{p.name} {p.stat().st_size} B" for p in d.iterdir())
    row.note = f"files: {', '.join(files)} (the {name}.onnx.data of float weights is a leftover nobody reads)"


def run_aimet(s: Setup, rec) -> None:
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.quantsim import QuantizationSimModel

    cfg, dummy = _aimet_config(), s.x_test[:1]

    def forward(model, _=None):
        with torch.no_grad():
            for x in s.calib_batches():
                model(x)

    with rec.check("aimet", "QuantSim tf_enhanced per-channel W4A8") as row:
        sim = QuantizationSimModel(copy.deepcopy(s.model), dummy, quant_scheme=QuantScheme.post_training_tf_enhanced,
                                   default_param_bw=4, default_output_bw=8, config_file=cfg)
        sim.compute_encodings(forward)
        row.acc = accuracy(sim.model, s.x_test, s.y_test)
        _aimet_export(sim, s, row, "quantsim_w4a8")
    with rec.check("aimet", "AdaRound W4 (500 it) + QuantSim A8") as row:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(s.calib, s.y_train[: len(s.calib)]),
                                             batch_size=64)
        params = AdaroundParameters(data_loader=loader, num_batches=len(loader), default_num_iterations=500)
        d = s.artifact("aimet_adaround")
        ada = Adaround.apply_adaround(copy.deepcopy(s.model), dummy, params, path=str(d), filename_prefix="adaround",
                                      default_param_bw=4, default_quant_scheme=QuantScheme.post_training_tf_enhanced,
                                      default_config_file=cfg)
        sim = QuantizationSimModel(ada, dummy, quant_scheme=QuantScheme.post_training_tf_enhanced,
                                   default_param_bw=4, default_output_bw=8, config_file=cfg)
        sim.set_and_freeze_param_encodings(str(d / "adaround.encodings"))
        sim.compute_encodings(forward)
        row.acc = accuracy(sim.model, s.x_test, s.y_test)
        _aimet_export(sim, s, row, "adaround_w4a8")
    with rec.check("aimet", "CLE on LeNet") as row:
        m = copy.deepcopy(s.model)
        equalize_model(m, dummy_input=dummy)
        changed = [n for n, p in m.named_parameters() if not torch.equal(p, dict(s.model.named_parameters())[n])]
        row.acc = accuracy(m, s.x_test, s.y_test)
        row.note = (f"{len(changed)} tensors changed: AIMET equalizes Conv->ReLU->Conv pairs only (LeNet has a "
                    "MaxPool between its convs; Linear pairs are not equalized)")
    with rec.check("aimet", "CLE on MobileNetV2-small (depthwise)") as row:
        ref = mobilenet(s)
        folded = copy.deepcopy(ref)
        fold_all_batch_norms(folded, input_shapes=(1, 1, 8, 8))
        m = copy.deepcopy(ref)
        equalize_model(m, dummy_input=dummy)
        changed = [n for n, p in m.named_parameters() if not torch.equal(p, dict(folded.named_parameters())[n])]
        with torch.no_grad():
            rel = ((m(s.x_test) - ref(s.x_test)).abs().max() / ref(s.x_test).abs().max()).item()
        row.note = f"{len(changed)} weight/bias tensors rescaled beyond BN folding; float output rel. change {rel:.2g}"
        if not changed:
            raise RuntimeError("CLE changed no weight of MobileNetV2-small")
