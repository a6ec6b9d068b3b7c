"""coremltools.optimize.torch (Apple): DKM palettization (scalar and vector) and post-training k-means.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy
import time

import torch
from peers_smoke import Setup, accuracy, disk_bytes, torch_summary, train
from torch import nn


def import_coremltools():
    import coremltools  # noqa: F401
    from coremltools.optimize.torch.palettization import DKMPalettizer  # noqa: F401


def _palettized_layers(model: nn.Module) -> str:
    luts = {n.split("._COREML_")[0]: tuple(t.shape) for n, t in model.state_dict().items() if n.endswith("/lut")}
    return "lut " + ", ".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in luts.items())


def _coreml_artifact(model: nn.Module, s: Setup, row, name: str) -> None:
    """The palettized torch model's state dict, and its Core ML mlprogram (which cannot run on Linux)."""
    import coremltools as ct

    path = s.artifact("coremltools") / f"{name}.pt"
    torch.save(model.state_dict(), path)
    row.bytes, row.stores = disk_bytes(path), torch_summary(model.state_dict())
    traced = torch.jit.trace(model.eval(), s.x_test[:1])
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 1, 8, 8))], convert_to="mlprogram",
                    minimum_deployment_target=ct.target.iOS18)
    pkg = s.artifact("coremltools") / f"{name}.mlpackage"
    ml.save(str(pkg))
    ops = [op.op_type for op in ml._mil_program.functions["main"].operations]
    row.extra["mlpackage_bytes"] = disk_bytes(pkg)
    row.note = (f"{_palettized_layers(model)}; mlpackage {disk_bytes(pkg)} B with {ops.count('constexpr_lut_to_dense')}"
                " constexpr_lut_to_dense (packed indices + LUT)")


def run_coremltools(s: Setup, rec) -> None:
    from coremltools.optimize.torch.palettization import (
        DKMPalettizer,
        DKMPalettizerConfig,
        ModuleDKMPalettizerConfig,
        PostTrainingPalettizer,
        PostTrainingPalettizerConfig,
    )

    for bits, dim in ((2, 1), (2, 2), (4, 4)):
        with rec.check("coremltools", f"DKMPalettizer {bits}b/{dim}d, 2 epochs") as row:
            torch.manual_seed(0)
            module_cfg = ModuleDKMPalettizerConfig(n_bits=bits, cluster_dim=dim, weight_threshold=0, milestone=0)
            palettizer = DKMPalettizer(copy.deepcopy(s.model), DKMPalettizerConfig(global_config=module_cfg))
            q = palettizer.prepare(inplace=True)
            start = time.perf_counter()
            train(q, s.x_train, s.y_train, epochs=2, lr=1e-3, step_hook=palettizer.step)
            row.extra["dkm_train_s"] = round(time.perf_counter() - start, 2)
            final = palettizer.finalize(inplace=False)
            row.acc = accuracy(final, s.x_test, s.y_test)
            w = final.classifier.fc1.weight
            row.extra["fc1_distinct_values"] = int(w.unique().numel())
            _coreml_artifact(final, s, row, f"dkm_{bits}b{dim}d")
    for bits, dim in ((2, 1), (4, 1), (4, 4)):
        with rec.check("coremltools", f"PostTrainingPalettizer {bits}b/{dim}d") as row:
            cfg = PostTrainingPalettizerConfig.from_dict(
                {"global_config": {"n_bits": bits, "cluster_dim": dim, "granularity": "per_tensor"}})
            final = PostTrainingPalettizer(copy.deepcopy(s.model), cfg).compress()
            row.acc = accuracy(final, s.x_test, s.y_test)
            _coreml_artifact(final, s, row, f"ptp_{bits}b{dim}d")
