"""NNCF (OpenVINO): nncf.quantize (8-bit, fast bias correction) and nncf.compress_weights (INT8/INT4).

Checks for benchmarks/peers_smoke.py (install notes: benchmarks/envs/README.md)."""

from __future__ import annotations

import copy

import torch
from peers_smoke import Setup, accuracy, build_lenet, disk_bytes, torch_summary
from torch import nn


def import_nncf():
    import nncf  # noqa: F401
    import nncf.torch  # noqa: F401


def _nncf_dataset(s: Setup):
    import nncf

    return nncf.Dataset([s.calib[i : i + 1] for i in range(len(s.calib))])  # one image an item: subset_size counts


def _weights_layout(model: nn.Module) -> str:
    return ", ".join(f"{n.rsplit('.', 2)[-2]} {str(t.dtype)[6:]}{tuple(t.shape)}" for n, t in model.state_dict().items()
                     if n.endswith(".weight") and t.dim() > 1)


def run_nncf(s: Setup, rec) -> None:
    import nncf
    import nncf.torch

    ds = _nncf_dataset(s)
    with rec.check("nncf", "quantize W8A8 (512 images)") as row:
        q = nncf.quantize(copy.deepcopy(s.model).eval(), ds, subset_size=len(s.calib))
        row.acc = accuracy(q, s.x_test, s.y_test)
        path = s.artifact("nncf") / "quantize_w8a8.pt"
        torch.save({"config": nncf.torch.get_config(q), "state_dict": q.state_dict()}, path)
        blob = torch.load(path, weights_only=False)  # the config is a pickled structure
        fresh = nncf.torch.load_from_config(build_lenet((1, 8, 8), 10).eval(), blob["config"])
        fresh.load_state_dict(blob["state_dict"])
        row.acc_artifact = accuracy(fresh, s.x_test, s.y_test)
        row.bytes, row.stores = disk_bytes(path), torch_summary(blob["state_dict"])
        row.note = "fake-quant hooks: float32 weights + scales; only 8-bit (no W4A8 in nncf.quantize)"
    with rec.check("nncf", "strip(DQ) of the quantized model",
                   expect_fail="half_range and narrow_range should be False") as row:
        nncf.strip(q, do_copy=True, strip_format=nncf.StripFormat.DQ, example_input=s.x_test[:1])
    modes = [("INT8_ASYM", {}), ("INT4_SYM", dict(ratio=1.0, group_size=-1, all_layers=True))]
    for mode, kw in modes:
        with rec.check("nncf", f"compress_weights {mode}") as row:
            def compress(model, mode=mode, kw=kw):
                return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), dataset=ds, **kw)

            q = compress(copy.deepcopy(s.model).eval())
            row.acc = accuracy(q, s.x_test, s.y_test)
            path = s.artifact("nncf") / f"compress_{mode}.pt"
            torch.save(q.state_dict(), path)
            # get_config does not serialize weight decompressors: rebuild the structure, then load the file's values
            fresh = compress(build_lenet((1, 8, 8), 10).eval())
            fresh.load_state_dict(torch.load(path, weights_only=True))
            row.acc_artifact = accuracy(fresh, s.x_test, s.y_test)
            row.bytes, row.stores = disk_bytes(path), torch_summary(fresh.state_dict())
            row.note = "weights: " + _weights_layout(fresh)
