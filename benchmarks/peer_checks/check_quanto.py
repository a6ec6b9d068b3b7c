"""optimum-quanto (Hugging Face): quantize + Calibration + freeze, saved as safetensors + quantization map.

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy
import json

import torch
from peers_smoke import Setup, accuracy, build_lenet, disk_bytes, torch_summary


def import_quanto():
    from optimum.quanto import quantize  # noqa: F401


def run_quanto(s: Setup, rec) -> None:
    from optimum.quanto import Calibration, freeze, qint2, qint4, qint8, quantization_map, quantize, requantize
    from safetensors.torch import load_file, save_file

    cases = [("W8A8 calibrate(streamline=True) freeze", qint8, qint8, True),
             ("W8A8 calibrate(streamline=False) freeze", qint8, qint8, False),
             ("W4 weight-only freeze", qint4, None, None), ("W2 weight-only freeze", qint2, None, None)]
    for name, w, a, streamline in cases:
        with rec.check("quanto", name) as row:
            q = copy.deepcopy(s.model).eval()
            quantize(q, weights=w, activations=a)
            if a is not None:
                with torch.no_grad(), Calibration(streamline=streamline):
                    for x in s.calib_batches():
                        q(x)
            freeze(q)
            row.acc = accuracy(q, s.x_test, s.y_test)
            d = s.artifact("quanto")
            tag = name.split()[0] + ("" if streamline is None else f"_streamline{int(streamline)}")
            save_file(q.state_dict(), str(d / f"{tag}.safetensors"))
            (d / f"{tag}.json").write_text(json.dumps(quantization_map(q)))
            fresh = build_lenet((1, 8, 8), 10).eval()
            requantize(fresh, load_file(str(d / f"{tag}.safetensors")), json.loads((d / f"{tag}.json").read_text()))
            row.acc_artifact = accuracy(fresh, s.x_test, s.y_test)
            with torch.no_grad():
                diff = (fresh(s.x_test) - q(s.x_test)).abs().max().item()
            row.bytes = disk_bytes(d / f"{tag}.safetensors") + disk_bytes(d / f"{tag}.json")
            row.stores = torch_summary(load_file(str(d / f"{tag}.safetensors")))
            row.note = f"reloaded vs in-memory logits max |diff| {diff:.3g}"
            if streamline:
                row.note += ": streamline's disabled output quantizers are not saved"
