"""learnq's side of the peers table (runs in ``.venv``): ``learnq.ptq.quantize`` with min-max, MSE, AdaRound, LAPQ
(and GPTQ once ``learnq.ptq`` registers it, issue 15), and QAT fine-tuning with LSQ, STE and DiffQ at W2A8.

Every row: per-channel weight grids (LAPQ: one step per tensor, the paper's joint search; per channel its Powell
search runs over 241 steps and takes ~10 min a call here), every conv and linear layer quantized
(``skip_first_last=False``), inputs of each layer at ``abits``; saved with ``learnq.save`` and reloaded with
``learnq.load`` into a freshly built LeNet.
"""

from __future__ import annotations

from pathlib import Path

import torch

import learnq
from learnq.act.wrappers import insert_activation_quantizers
from learnq.checkpoint import read
from learnq.grid import QuantizedTensor
from learnq.ptq import quantize
from learnq.ptq.registry import available_methods

from .common import LAYERS, Bench, Row, accuracy, max_logit_diff, timed, train, verdict
from .plan import SETTINGS, Method

PTQ_OPTIONS = {"lapq": {"granularity": "tensor"}}


def learnq_layers(path: Path, numels: dict[str, int]) -> dict[str, dict]:
    """How each layer's weight is stored in a learnq model file: its packed codes' bytes (the uint8 slice)."""
    mf = read(path)
    out = {}
    for layer in LAYERS:
        name = f"{layer}.weight"
        entry = mf.entries.get(name)
        n = numels[layer]
        if isinstance(entry, QuantizedTensor):
            code_bytes = sum(s.nbytes for s in mf.slices[name] if s.blob == "uint8")
            bits = int(entry.group_bits.max()) if entry.group_bits is not None else entry.bits
            out[layer] = {"dtype": f"uint8 ({bits}-bit packed)", "stored_bits": 8 * code_bytes / n,
                          "code_bits": bits, "float_copy": False, "tensor": name, "numel": n}
        else:
            dtype = str(entry.dtype).replace("torch.", "") if entry is not None else "not found"
            out[layer] = {"dtype": dtype, "stored_bits": 32.0, "code_bits": None, "float_copy": False, "numel": n}
    return out


def save_reload(bench: Bench, row: Row, model: torch.nn.Module, name: str, wbits: int) -> None:
    path = bench.artifact("learnq") / f"{name}.safetensors"
    learnq.save(model, path)
    fresh = bench.build()
    learnq.load(path, fresh)
    row.acc = accuracy(model, bench.x_test, bench.y_test)
    row.acc_artifact = accuracy(fresh, bench.x_test, bench.y_test)
    row.reload_diff = max_logit_diff(model, fresh, bench.x_test)
    row.bytes, row.artifact = path.stat().st_size, "learnq model file (.safetensors)"
    mf = read(path)
    row.stores = ", ".join(f"{s.blob} {s.nbytes} B" for s in _blobs(mf))
    row.layers = learnq_layers(path, bench.layer_numels())
    row.low_bit = verdict(row.layers, wbits)


def _blobs(mf):
    totals: dict[str, int] = {}
    for slices in mf.slices.values():
        for s in slices:
            totals[s.blob] = totals.get(s.blob, 0) + s.nbytes
    return [type("B", (), {"blob": k, "nbytes": v}) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


def run_ptq(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    wbits, abits, _, _ = SETTINGS[setting]
    if method.key not in available_methods():
        row.status = "pending"
        row.note = (f"learnq.ptq has no {method.key!r} method yet (issue 15): this row runs as soon as it is "
                    "registered")
        return
    model = bench.float_model()
    opts = dict(PTQ_OPTIONS.get(method.key, {}))
    granularity = opts.pop("granularity", "channel")
    if method.key == "adaround":
        opts["iterations"] = bench.options["adaround_iterations"]
    if method.key == "lapq" and bench.options.get("quick"):
        opts.update(p_count=4, maxiter=1)

    def run():
        return quantize(model, bench.calib_dataset(), method=method.key, wbits=wbits, abits=abits,
                        granularity=granularity, skip_first_last=False, seed=bench.seed, progress=False, **opts)

    rounds = bench.options["rounds"] if method.fast else 1
    result, row.seconds, row.mse_seconds = timed(run, baseline, rounds, warmup=method.fast)
    row.note = f"granularity {granularity}" + (f", options {opts}" if opts else "")
    save_reload(bench, row, result.model, f"{method.key}_{setting}", wbits)


QAT = {
    "lsq": lambda: learnq.LSQ(bits=2),
    "ste": lambda: learnq.STE(bits=2),
    "diffq": lambda: learnq.DiffQ(bits_overrides={"*": 2}),
}


def run_qat(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    wbits, abits, _, _ = SETTINGS[setting]

    def run():
        model = bench.float_model()
        insert_activation_quantizers(model, bits=abits, method="pact")
        handle = learnq.prepare(model, QAT[method.key]())
        own, _ = handle.split_parameters()
        train(model, bench, [{"params": own}, *handle.param_groups()], extra_loss=handle.loss)
        handle.freeze()
        return model

    model, row.seconds, row.mse_seconds = timed(run, baseline, 1, warmup=False)
    cfg = QAT[method.key]()
    row.note = (f"{type(cfg).__name__} per {'tensor' if method.key == 'diffq' else 'channel'}, PACT 8-bit on the "
                f"ReLU outputs; {bench.options['qat_epochs']} epochs from the float model")
    save_reload(bench, row, model, f"qat_{method.key}", wbits)


def run(bench: Bench, method: Method, setting: str, row: Row, baseline) -> None:
    (run_qat if SETTINGS[setting][2] else run_ptq)(bench, method, setting, row, baseline)
