"""The floors of issue 12's unmet speed goals: the time of the part of each path that no learnq change removes.

For every row of ``speed_table.py`` whose goal was not met, this measures, against the same baseline and in the same
way (one torch thread, interleaved rounds, per round the per-call median of each side, ratio = floor / baseline,
median over rounds), the unavoidable part alone:

* ``save_resnet20``: the learnq file's bytes written crash-safely (``learnq.atomic_file.write_atomic``: temp file,
  fsync, rename; ``torch.save`` does not sync) plus the CRC-32 of those bytes, against ``torch.save`` of the state;
* ``save_diffq16m``: the same for the 16M DiffQ file plus packing its codes (``code_packing.pack_codes`` of the
  exported tensors, one stream per width); ``_cold`` adds the export itself (``export_quantized``: range, widths,
  codes);
* ``load_resnet20``: ``learnq.load(path)`` (parse, checksums, unpacking; no model) plus torch's
  ``register_parametrization`` of a trivial parametrization on the 22 quantized layers of a fresh model, against
  ``torch.load`` + ``load_state_dict``;
* ``eval_ptq_*``: the float network run as plain functions with the four in-place operations of the activation
  grid (div, round, clamp, mul) on each quantized input (no modules, no hooks), against the float model;
* ``lapq_vs_mse``: LAPQ's Lp sweep (``lapq.lp_sweep``: the golden-section clipping at every norm, LAPQ §4.1) and
  its loss evaluations, timed inside one LAPQ run, against MSE's whole run;
* ``diffq_step_*``: the float step plus the Gaussian noise of every quantized weight (``torch.randn``, Eq. 6) and
  Adam on the bits logits, against the float step;
* ``diffq_eval_mlp_b64``: the float forward with each weight read through torch's parametrize machinery (a
  parametrization returning a stored tensor), against the float forward.

    .venv/bin/python benchmarks/speed_floors.py            # writes benchmarks/results/speed_floors.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_timing import ratio_row, timed_part  # noqa: E402
from speed_table import diffq_mlp, digits_lenet, resnet20_w4a8, train_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class _Stored(nn.Module):
    """A parametrization returning a stored tensor (torch's access cost with nothing to compute)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.value


def _fq(x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return torch.div(x, s).round_().clamp_(qmin, qmax).mul_(s)


def file_floors(rounds: int, calls: int, folder: Path) -> dict[str, Any]:
    import learnq
    from learnq.atomic_file import write_atomic
    from learnq.code_packing import pack_codes
    from learnq.quantized import plain_state, quantized_parameters

    out: dict[str, Any] = {}
    q, resnet = resnet20_w4a8()
    d16, handle = diffq_mlp(16_000_000)
    for name, model in (("resnet20", q), ("diffq16m", d16)):
        path, pt, tmp = folder / f"{name}.safetensors", folder / f"{name}.pt", folder / f"{name}.floor"
        learnq.save(model, path)
        data = path.read_bytes()
        state = {k: v.detach().clone().contiguous() for k, v in plain_state(model).items()}
        n = max(1, calls // (4 if name != "resnet20" else 1))

        def write(d: bytes = data, t: Path = tmp) -> None:
            zlib.crc32(d)
            write_atomic(os.fspath(t), d)

        row = ratio_row(write, lambda s=state, p=pt: torch.save(s, p), rounds, n)
        row["what"] = "CRC-32 of the file's bytes + write_atomic (fsync, rename)"
        out[f"save_{name}"] = row
        print(f"floor save_{name}: {row['ratio_median']:.2f}x ({row['learnq_ms']:.1f} ms)", flush=True)
        if name == "diffq16m":
            qts = dict(quantized_parameters(model))

            def pack_write(write=write, qts=qts) -> None:
                for k, qt in qts.items():
                    pack_codes(qt, k)
                write()

            row = ratio_row(pack_write, lambda s=state, p=pt: torch.save(s, p), rounds, n)
            row["what"] = "packing the exported codes + CRC-32 + write_atomic"
            out["save_diffq16m"] = row
            print(f"floor save_diffq16m (pack + write): {row['ratio_median']:.2f}x ({row['learnq_ms']:.1f} ms)",
                  flush=True)
            quantizers = list(handle.quantizers.values())

            def export_pack_write(pack_write=pack_write, quantizers=quantizers) -> None:
                for qz in quantizers:
                    qz.export_quantized()
                pack_write()

            row = ratio_row(export_pack_write, lambda s=state, p=pt: torch.save(s, p), rounds, n)
            row["what"] = "export (range, widths, codes) + packing + CRC-32 + write_atomic"
            out["save_diffq16m_cold"] = row
            print(f"floor save_diffq16m_cold: {row['ratio_median']:.2f}x ({row['learnq_ms']:.1f} ms)", flush=True)
    # load: read the file (no model) + torch's registration of one parametrization per quantized layer
    path, pt = folder / "resnet20.safetensors", folder / "resnet20.pt"
    torch.save({k: v.detach().clone().contiguous() for k, v in plain_state(q).items()}, pt)
    layers = [n.rpartition(".")[0] for n, _ in quantized_parameters(q)]

    def read_register(m: nn.Module, p: Path = path, layers: list[str] = layers) -> None:
        learnq.load(p)
        for name in layers:
            mod = m.get_submodule(name)
            parametrize.register_parametrization(mod, "weight", _Stored(mod.weight.detach()), unsafe=True)

    row = ratio_row(read_register, lambda m, p=pt: m.load_state_dict(torch.load(p, weights_only=True),
                                                                     strict=False),
                    rounds, calls, setup=lambda: copy.deepcopy(resnet))
    row["what"] = "learnq.load(path) (parse, CRC, unpack) + 22 register_parametrization"
    out["load_resnet20"] = row
    print(f"floor load_resnet20: {row['ratio_median']:.2f}x ({row['learnq_ms']:.1f} ms)", flush=True)
    return out


def eval_floors(rounds: int, calls: int) -> dict[str, Any]:
    from learnq.pipeline.models import build_model
    from learnq.ptq import quantize

    out: dict[str, Any] = {}
    torch.manual_seed(0)
    model = build_model("thesis-mnist", (1, 28, 28), 10).eval()
    q = quantize(copy.deepcopy(model), torch.rand(128, 1, 28, 28), method="minmax", wbits=8, abits=8,
                 progress=False).model.eval()
    s1 = q.fc1.input_quantizer.grid().scale.reshape(())
    s2 = q.fc2.input_quantizer.grid().scale.reshape(())
    w1, b1, w2, b2 = (t.detach().clone() for t in (q.fc1.weight, q.fc1.bias, q.fc2.weight, q.fc2.bias))
    lo1, hi1 = q.fc1.input_quantizer.grid().qmin, q.fc1.input_quantizer.grid().qmax
    lo2, hi2 = q.fc2.input_quantizer.grid().qmin, q.fc2.input_quantizer.grid().qmax

    def functional(x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(_fq(x.flatten(1), s1, lo1, hi1), w1, b1))
        return F.linear(_fq(h, s2, lo2, hi2), w2, b2)

    for batch in (64, 256):
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            row = ratio_row(lambda x=x: functional(x), lambda x=x: model(x), rounds, calls * 10)
        row["what"] = "float network as functions + div/round/clamp/mul on each quantized input"
        out[f"eval_ptq_mlp_b{batch}"] = row
        print(f"floor eval_ptq_mlp_b{batch}: {row['ratio_median']:.2f}x", flush=True)
    torch.manual_seed(0)
    lenet = build_model("lenet", (1, 28, 28), 10).eval()
    ql = quantize(copy.deepcopy(lenet), torch.rand(128, 1, 28, 28), method="minmax", wbits=8, abits=8,
                  progress=False).model.eval()
    hooked = copy.deepcopy(lenet)
    for name, m in hooked.named_modules():
        qmod = ql.get_submodule(name) if name else ql
        iq = getattr(qmod, "input_quantizer", None)
        if iq is not None:
            gr = iq.grid()
            s, lo, hi = gr.scale.reshape(()), gr.qmin, gr.qmax
            m.register_forward_pre_hook(lambda _m, a, s=s, lo=lo, hi=hi: (_fq(a[0], s, lo, hi),))
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        row = ratio_row(lambda: hooked(x), lambda: lenet(x), rounds, calls * 10)
    row["what"] = "float LeNet + one pre-hook per quantized layer doing div/round/clamp/mul"
    out["eval_ptq_lenet_b64"] = row
    print(f"floor eval_ptq_lenet_b64: {row['ratio_median']:.2f}x", flush=True)
    return out


def diffq_floors(rounds: int, calls: int) -> dict[str, Any]:
    import learnq
    from learnq.pipeline.models import build_model

    out: dict[str, Any] = {}
    for net, batches in (("thesis-mnist", (64,)), ("lenet", (64, 256))):
        torch.manual_seed(0)
        init = build_model(net, (1, 28, 28), 10)
        fl = copy.deepcopy(init)
        dq = copy.deepcopy(init)
        handle = learnq.prepare(dq, learnq.DiffQ(group_size=8))
        sizes = [qz.numel for qz in handle.quantizers.values()]
        logits = [nn.Parameter(qz.logits.detach().clone()) for qz in handle.quantizers.values()
                  if qz.logits is not None]
        for p in logits:
            p.grad = torch.randn_like(p)
        opt_f = torch.optim.Adam(fl.parameters(), 1e-3)
        opt_l = torch.optim.Adam(logits, 1e-3)
        tag = "mlp" if net == "thesis-mnist" else "lenet"
        for batch in batches:
            x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

            step_f = functools.partial(train_step, fl, opt_f, x, y)

            def floor(step_f=step_f, sizes=sizes, opt_l=opt_l) -> None:
                step_f()
                for n in sizes:
                    torch.randn(n)
                opt_l.step()

            fl.train()
            row = ratio_row(floor, step_f, rounds, calls * 5)
            row["what"] = "float step + randn of every quantized weight + Adam on the bits logits"
            out[f"diffq_step_{tag}_b{batch}"] = row
            print(f"floor diffq_step_{tag}_b{batch}: {row['ratio_median']:.2f}x", flush=True)
        if net == "thesis-mnist":
            fl.eval()
            stored = copy.deepcopy(init).eval()
            for m in stored.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    parametrize.register_parametrization(m, "weight", _Stored(m.weight.detach().clone()),
                                                         unsafe=True)
            x = torch.rand(64, 1, 28, 28)
            with torch.no_grad():
                row = ratio_row(lambda s=stored, x=x: s(x), lambda f=fl, x=x: f(x), rounds, calls * 10)
            row["what"] = "float forward, weights read through torch's parametrize (stored tensors)"
            out["diffq_eval_mlp_b64"] = row
            print(f"floor diffq_eval_mlp_b64: {row['ratio_median']:.2f}x", flush=True)
    return out


def lapq_floor() -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    import learnq.ptq.calib_loss as calib_loss
    import learnq.ptq.lapq as lapq
    from learnq.ptq import quantize

    model, x, y = digits_lenet()
    calib = TensorDataset(x[:512], y[:512])
    spent = {"lp_sweep": 0.0, "evaluate": 0.0}
    sweep, evaluate = lapq.lp_sweep, calib_loss.CalibrationLoss.evaluate

    def timed_sweep(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return sweep(*a, **k)
        finally:
            spent["lp_sweep"] += time.perf_counter() - t

    def timed_evaluate(self: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return evaluate(self, *a, **k)
        finally:
            spent["evaluate"] += time.perf_counter() - t

    lapq.lp_sweep, calib_loss.CalibrationLoss.evaluate = timed_sweep, timed_evaluate
    try:
        t = time.perf_counter()
        quantize(model, calib, method="lapq", wbits=4, abits=4, granularity="tensor", progress=False)
        lapq_s = time.perf_counter() - t
        t = time.perf_counter()
        quantize(model, calib, method="mse", wbits=4, abits=4, granularity="tensor", progress=False)
        mse_s = time.perf_counter() - t
    finally:
        lapq.lp_sweep, calib_loss.CalibrationLoss.evaluate = sweep, evaluate
    row = {"lapq_s": lapq_s, "mse_s": mse_s, "lp_sweep_s": spent["lp_sweep"], "evaluate_s": spent["evaluate"],
           "ratio_median": (spent["lp_sweep"] + spent["evaluate"]) / mse_s,
           "what": "LAPQ's Lp sweep + its loss evaluations (timed inside one LAPQ run) / MSE's whole run"}
    print(f"floor lapq: sweep {spent['lp_sweep']:.2f} s + evaluations {spent['evaluate']:.2f} s of LAPQ "
          f"{lapq_s:.2f} s; MSE {mse_s:.2f} s -> {row['ratio_median']:.2f}x", flush=True)
    return {"lapq_vs_mse": row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="file,eval,diffq,lapq")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "speed_floors.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": {}, "parts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            with timed_part(result["parts"], part, rounds=args.rounds):
                if part == "file":
                    rows = file_floors(args.rounds, args.calls, Path(tmp))
                elif part == "eval":
                    rows = eval_floors(args.rounds, args.calls)
                elif part == "diffq":
                    rows = diffq_floors(args.rounds, args.calls)
                elif part == "lapq":
                    rows = lapq_floor()
                else:
                    raise SystemExit(f"--parts: unknown part {part!r}")
                result["rows"].update(rows)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
