"""NNCF in the peers table: ``nncf.quantize`` (W8A8 over the 512 calibration images; 4- and 2-bit weights are
attempted through ``AdvancedQuantizationParameters`` and refused by NNCF's hardware config) and
``nncf.compress_weights`` (INT8_ASYM, INT4_SYM per channel on every layer).

Artifacts: ``nncf.quantize``: ``nncf.torch.get_config`` + ``state_dict`` in one ``torch.save`` file (the config is a
pickled structure), reloaded with ``load_from_config``; ``compress_weights``: the state dict, reloaded by compressing
a fresh LeNet and loading the file into it (``get_config`` does not serialize weight decompressors). Install and
driving notes: benchmarks/envs/README.md, benchmarks/peer_checks/check_nncf.py.
"""

from __future__ import annotations

import torch
from peer_checks.check_nncf import _nncf_dataset

from .common import Bench, Row, accuracy, fresh_copy, inspect, max_logit_diff, timed, torch_tensors, train
from .plan import SETTINGS, Method

COMPRESS = {"W8A32": ("INT8_ASYM", {}), "W4A32": ("INT4_SYM", {"ratio": 1.0, "group_size": -1, "all_layers": True})}


def _advanced(wbits: int, abits: int):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    return AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(num_bits=wbits),
                                          activations_quantization_params=QuantizationParameters(num_bits=abits))


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    import nncf
    import nncf.torch

    wbits, abits, qat, _ = SETTINGS[setting]
    ds = _nncf_dataset(bench)
    numels = bench.layer_numels()
    if method.key in ("quantize", "qat"):
        advanced = None if (wbits, abits) == (8, 8) else _advanced(wbits, abits)

        def quantize():
            q = nncf.quantize(fresh_copy(bench.model), ds, subset_size=len(bench.x_calib),
                              advanced_parameters=advanced)
            return train(q, bench, q.parameters()) if qat else q

        q, row.seconds, row.mse_seconds = timed(quantize, baseline, 1, warmup=False)
        row.acc = accuracy(q, bench.x_test, bench.y_test)
        path = bench.artifact("nncf") / f"quantize_{setting}.pt"
        torch.save({"config": nncf.torch.get_config(q), "state_dict": q.state_dict()}, path)
        blob = torch.load(path, weights_only=False)  # NNCF's config is a pickled structure
        fresh = nncf.torch.load_from_config(bench.build(), blob["config"])
        fresh.load_state_dict(blob["state_dict"])
        row.artifact = "torch.save of nncf.torch.get_config + state_dict (pickle)"
        row.note = "fast bias correction (default); fake-quant hooks"
        tensors = torch_tensors(blob["state_dict"])
    else:
        mode, kw = COMPRESS[setting]

        def compress(model):
            return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), dataset=ds, **kw)

        q, row.seconds, row.mse_seconds = timed(lambda: compress(fresh_copy(bench.model)), baseline,
                                                bench.options["rounds"], warmup=True)
        row.acc = accuracy(q, bench.x_test, bench.y_test)
        path = bench.artifact("nncf") / f"compress_{mode}.pt"
        torch.save(q.state_dict(), path)
        fresh = compress(bench.build())
        fresh.load_state_dict(torch.load(path, weights_only=True))
        row.artifact = "torch.save state_dict, reloaded into a freshly compressed LeNet"
        row.note = f"mode {mode} {kw}"
        tensors = torch_tensors(torch.load(path, weights_only=True))
    row.acc_artifact = accuracy(fresh, bench.x_test, bench.y_test)
    row.reload_diff = max_logit_diff(q, fresh, bench.x_test)
    row.bytes = path.stat().st_size
    inspect(row, tensors, numels, wbits)


def warm_up(bench: Bench) -> None:
    """NNCF JIT-compiles a C++ extension on its first quantize (30-60 s): once, untimed, before any row."""
    import nncf

    nncf.quantize(fresh_copy(bench.model), _nncf_dataset(bench), subset_size=8)
