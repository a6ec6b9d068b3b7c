"""The speed table of issue 12 ("fast where users wait"): every row measured as a ratio to its baseline in one run.

Each row times a learnq path against a baseline in the same process, one torch thread (``torch.set_num_threads(1)``),
in interleaved rounds (per round: ``calls`` calls of each side, the per-call median); the ratio of a round is learnq's
time over the baseline's, and the row reports the median and the minimum of the rounds' ratios with the goal of the
issue. Rows (models built with seeded initial weights: save, load and eval times do not depend on training; LAPQ and
MSE run on a LeNet trained for a few seconds on sklearn digits, at equal accuracy):

* ``save``: ``learnq.save(model, path)`` against ``torch.save(state_dict)``: ResNet-20 W4A8 (PTQ min-max, per channel),
  a 10.2M-parameter MLP with 4-bit per-channel weights (also MB/s of file), a 16M-parameter MLP prepared with DiffQ
  (g8, widths spread over 2..15 bits: per-group widths);
* ``load``: ``learnq.load(path, fresh model)`` against ``torch.load`` + ``load_state_dict`` (fresh model untimed);
* ``eval``: a PTQ W8A8 model (min-max weights, input quantizers) against the float model, no grad: thesis MLP at
  batch 64 / 256, LeNet (MNIST shape) at batch 64;
* ``lapq``: ``quantize(method="lapq")`` W4A4 per tensor against ``method="mse"`` on the same LeNet (wall time of one
  call each per round), with LAPQ's evaluations per second and both accuracies;
* ``diffq``: a DiffQ g8 train step (forward, backward, Adam) against the float step: thesis MLP batch 64, LeNet batch
  64 / 256; eval (no grad) of the DiffQ-prepared model and of the model loaded from its file against float;
* ``scaling``: save and load time per parameter (ns) of 4-bit MLPs of 1M, 4M and 16M parameters, and their ratios.

Used by ``benchmarks/speed.py measure`` (key ``"table"`` of ``speed.json``) and rendered by ``speed.py render``.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from bench_timing import load_range, ratio_row, timed_part
except ImportError:  # imported as benchmarks.speed_table
    from benchmarks.bench_timing import load_range, ratio_row, timed_part

#: row -> (what, goal ratio or None); the goal is the issue's
GOALS: dict[str, tuple[str, float | None]] = {
    "save_resnet20": ("`learnq.save` vs `torch.save`, ResNet-20 W4A8 (saved again, unchanged: export cached)", 1.5),
    "save_mlp10m": ("`learnq.save` vs `torch.save`, 10.2M MLP 4-bit", 1.5),
    "save_resnet20_cold": ("`learnq.save` vs `torch.save`, ResNet-20 W4A8, first save after a change (no cached "
                           "export)", 1.5),
    "save_diffq16m": ("`learnq.save` vs `torch.save`, DiffQ mixed widths 16M (saved again: export cached)", 2.0),
    "save_diffq16m_cold": ("`learnq.save` vs `torch.save`, DiffQ 16M, first save after a change", 2.0),
    "load_resnet20": ("`learnq.load(path, model)` vs `torch.load` + `load_state_dict`, ResNet-20", 1.5),
    "load_mlp10m": ("`learnq.load(path, model)` vs `torch.load` + `load_state_dict`, 10.2M MLP", 1.5),
    "eval_ptq_mlp_b64": ("eval PTQ W8A8 vs float, thesis MLP batch 64", 1.3),
    "eval_ptq_mlp_b256": ("eval PTQ W8A8 vs float, thesis MLP batch 256", 1.3),
    "eval_ptq_lenet_b64": ("eval PTQ W8A8 vs float, LeNet batch 64", 1.1),
    "lapq_vs_mse": ("LAPQ W4A4 vs MSE wall time, LeNet (digits)", 3.0),
    "diffq_step_mlp_b64": ("DiffQ g8 train step vs float, thesis MLP batch 64", 1.6),
    "diffq_step_lenet_b64": ("DiffQ g8 train step vs float, LeNet batch 64", 1.10),
    "diffq_step_lenet_b256": ("DiffQ g8 train step vs float, LeNet batch 256", 1.05),
    "diffq_eval_mlp_b64": ("eval of a DiffQ-prepared model vs float, MLP batch 64", 1.05),
    "diffq_loaded_eval_mlp_b64": ("eval of a DiffQ model loaded from its file vs float, MLP batch 64", 1.05),
}


def mlp(params: int, bits: int | None = 4) -> nn.Module:
    """A 3-layer ReLU MLP of about ``params`` parameters (width w: 1024·w + w·w + w·1024), weights quantized at
    ``bits`` per channel (min-max) when ``bits`` is given."""
    from learnq.grid import GridSpec
    from learnq.ptq.ptq_weight import quantize_weights

    w = int(((2048**2 + 4 * params) ** 0.5 - 2048) / 2)
    model = nn.Sequential(nn.Linear(1024, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1024)).eval()
    if bits:
        quantize_weights(model, GridSpec(bits=bits, scheme="symmetric", granularity="channel"))
    return model


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               extra_loss: Callable[[], torch.Tensor] | None = None) -> None:
    """One training step: cross-entropy (plus ``extra_loss()``, e.g. a QAT handle's loss), backward, ``opt.step()``."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    (loss + extra_loss() if extra_loss is not None else loss).backward()
    opt.step()


def resnet20_w4a8() -> tuple[nn.Module, nn.Module]:
    """``(quantized, float)``: ResNet-20 (seeded initial weights) and its PTQ W4A8 copy (min-max, per channel)."""
    from learnq.pipeline.models import build_model
    from learnq.ptq import quantize

    torch.manual_seed(0)
    resnet = build_model("resnet20", (3, 32, 32), 10).eval()
    q_resnet = quantize(copy.deepcopy(resnet), torch.rand(64, 3, 32, 32), method="minmax", wbits=4, abits=8,
                        granularity="channel", progress=False).model
    return q_resnet, resnet


def diffq_mlp(params: int = 16_000_000) -> tuple[nn.Module, Any]:
    """``(model, handle)``: an MLP of ``params`` parameters prepared with DiffQ g8, its bits logits drawn so that
    the widths spread over 2..15 bits (per-group widths), in eval mode."""
    import learnq

    torch.manual_seed(0)
    model = mlp(params, bits=None)
    handle = learnq.prepare(model, learnq.DiffQ(group_size=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for qz in handle.quantizers.values():
            if qz.logits is not None:
                qz.logits.copy_(torch.randn(qz.logits.shape, generator=g) * 3)
    return model.eval(), handle


def digits_lenet() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, x, y)``: a LeNet trained for a few seconds (15 epochs, 1,400 images) on sklearn digits, in eval
    mode, and the digits (the last 397 images are its test split)."""
    from learnq.pipeline.models import build_model

    x, y = _digits()
    torch.manual_seed(0)
    model = build_model("lenet", (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        perm = torch.randperm(1400)
        for i in range(0, 1400, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x, y


def _drop_exports(model: nn.Module) -> None:
    """Forget every quantizer's cached export, as a change of its weight would (the next save exports again)."""
    from learnq.parametrization import WeightParametrization

    for m in model.modules():
        if isinstance(m, WeightParametrization):
            m.__dict__["_export_cache"] = None


def file_rows(rounds: int, calls: int, folder: Path, quick: bool) -> dict[str, Any]:
    import learnq
    from learnq.quantized import plain_state

    out: dict[str, Any] = {}
    q_resnet, resnet = resnet20_w4a8()
    torch.manual_seed(0)
    big = mlp(10_200_000)
    template_big = mlp(10_200_000, bits=None)
    d16, _ = diffq_mlp(16_000_000)
    cases = {"resnet20": (q_resnet, resnet), "mlp10m": (big, template_big), "diffq16m": (d16, None)}
    for name, (model, template) in cases.items():
        path, pt = folder / f"{name}.safetensors", folder / f"{name}.pt"
        state = {k: v.detach().clone().contiguous() for k, v in plain_state(model).items()}
        n = max(1, calls // (4 if name != "resnet20" else 1))
        row = ratio_row(lambda m=model, p=path: learnq.save(m, p), lambda s=state, p=pt: torch.save(s, p), rounds, n)
        row["file_mb"] = path.stat().st_size / 2**20
        row["file_mb_per_s"] = row["file_mb"] / (row["learnq_ms"] / 1e3)
        row["parameters"] = sum(t.numel() for t in state.values())
        out[f"save_{name}"] = row
        print(f"save_{name}: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x), "
              f"{row['file_mb_per_s']:.0f} MB/s of file", flush=True)
        if name != "mlp10m":  # the first save after a change: every quantizer's cached export dropped (untimed)
            row = ratio_row(lambda _, m=model, p=path: learnq.save(m, p), lambda _, s=state, p=pt: torch.save(s, p),
                            rounds, n, setup=lambda m=model: _drop_exports(m))
            row["file_mb"] = path.stat().st_size / 2**20
            row["file_mb_per_s"] = row["file_mb"] / (row["learnq_ms"] / 1e3)
            out[f"save_{name}_cold"] = row
            print(f"save_{name}_cold: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x)", flush=True)
        if template is None:
            continue
        fresh = lambda t=template: copy.deepcopy(t)  # noqa: E731
        row = ratio_row(lambda m, p=path: learnq.load(p, m),
                        lambda m, p=pt: m.load_state_dict(torch.load(p, weights_only=True), strict=False),
                        rounds, n, setup=fresh)
        out[f"load_{name}"] = row
        print(f"load_{name}: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x)", flush=True)
    return out


def scaling_rows(rounds: int, calls: int, folder: Path, quick: bool) -> dict[str, Any]:
    import learnq
    from learnq.quantized import plain_state

    out = {}
    for size in ((1_000_000, 4_000_000) if quick else (1_000_000, 4_000_000, 16_000_000)):
        torch.manual_seed(0)
        model, template = mlp(size), mlp(size, bits=None)
        path, pt = folder / "s.safetensors", folder / "s.pt"
        state = {k: v.detach().clone().contiguous() for k, v in plain_state(model).items()}
        params = sum(t.numel() for t in state.values())
        n = max(1, calls // 4)
        save = ratio_row(lambda m=model, p=path: learnq.save(m, p), lambda s=state, p=pt: torch.save(s, p), rounds, n)
        load = ratio_row(lambda m, p=path: learnq.load(p, m),
                         lambda m, p=pt: m.load_state_dict(torch.load(p, weights_only=True), strict=False), rounds, n,
                         setup=lambda t=template: copy.deepcopy(t))
        out[str(size)] = {"parameters": params, "save": save, "load": load,
                          "save_ns_per_param": 1e6 * save["learnq_ms"] / params,
                          "load_ns_per_param": 1e6 * load["learnq_ms"] / params,
                          "torch_save_ns_per_param": 1e6 * save["baseline_ms"] / params,
                          "torch_load_ns_per_param": 1e6 * load["baseline_ms"] / params}
        print(f"{params:,} params: save {out[str(size)]['save_ns_per_param']:.2f} ns/param "
              f"({save['ratio_median']:.2f}x), load {out[str(size)]['load_ns_per_param']:.2f} ns/param "
              f"({load['ratio_median']:.2f}x)", flush=True)
    return out


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, torch.tensor(d.target)


def eval_rows(rounds: int, calls: int) -> dict[str, Any]:
    from learnq.pipeline.models import build_model
    from learnq.ptq import quantize

    out = {}
    for net, shape, batches in (("thesis-mnist", (1, 28, 28), (64, 256)), ("lenet", (1, 28, 28), (64,))):
        torch.manual_seed(0)
        model = build_model(net, shape, 10).eval()
        q = quantize(copy.deepcopy(model), torch.rand(128, *shape), method="minmax", wbits=8, abits=8,
                     progress=False).model.eval()
        for batch in batches:
            x = torch.rand(batch, *shape)
            with torch.no_grad():
                row = ratio_row(lambda x=x, q=q: q(x), lambda x=x, m=model: m(x), rounds, calls * 10)
            key = f"eval_ptq_{'mlp' if net == 'thesis-mnist' else 'lenet'}_b{batch}"
            out[key] = row
            print(f"{key}: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x)", flush=True)
    return out


def lapq_row(rounds: int) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    from learnq.ptq import quantize

    model, x, y = digits_lenet()
    calib = TensorDataset(x[:512], y[:512])

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x[1400:]).argmax(1) == y[1400:]).float().mean())

    info: dict[str, Any] = {}

    def run(method: str) -> None:
        r = quantize(model, calib, method=method, wbits=4, abits=4, granularity="tensor", progress=False)
        info[method] = {"accuracy": acc(r.model), "loss_evals": r.loss_evals,
                        "evals_per_second": r.extra.get("lapq", {}).get("evals_per_second")}

    row = ratio_row(lambda: run("lapq"), lambda: run("mse"), rounds, 1, warmup=0)
    row.update({"float_accuracy": acc(model), "lapq": info["lapq"], "mse": info["mse"]})
    print(f"lapq_vs_mse: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x), "
          f"{info['lapq']['evals_per_second']:.1f} evals/s, accuracy LAPQ {info['lapq']['accuracy']:.4f} "
          f"MSE {info['mse']['accuracy']:.4f}", flush=True)
    return {"lapq_vs_mse": row}


def diffq_rows(rounds: int, calls: int, folder: Path) -> dict[str, Any]:
    import learnq
    from learnq.pipeline.models import build_model

    out = {}
    for net, batches in (("thesis-mnist", (64,)), ("lenet", (64, 256))):
        torch.manual_seed(0)
        init = build_model(net, (1, 28, 28), 10)
        fl, dq = copy.deepcopy(init), copy.deepcopy(init)
        handle = learnq.prepare(dq, learnq.DiffQ(group_size=8))
        opt_f = torch.optim.Adam(fl.parameters(), 1e-3)
        opt_d = torch.optim.Adam([{"params": handle.split_parameters()[0]}, *handle.param_groups()], lr=1e-3)
        tag = "mlp" if net == "thesis-mnist" else "lenet"
        for batch in batches:
            x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

            step_f = functools.partial(train_step, fl, opt_f, x, y)
            step_d = functools.partial(train_step, dq, opt_d, x, y, handle.loss)

            fl.train(), dq.train()
            row = ratio_row(step_d, step_f, rounds, calls * 5)
            out[f"diffq_step_{tag}_b{batch}"] = row
            print(f"diffq_step_{tag}_b{batch}: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x)", flush=True)
        if net == "thesis-mnist":
            fl.eval(), dq.eval()
            path = folder / "dq.safetensors"
            learnq.save(dq, path)
            loaded = learnq.load(path, copy.deepcopy(init)).eval()
            x = torch.rand(64, 1, 28, 28)
            with torch.no_grad():
                for key, m in (("diffq_eval_mlp_b64", dq), ("diffq_loaded_eval_mlp_b64", loaded)):
                    row = ratio_row(lambda m=m, x=x: m(x), lambda x=x, f=fl: f(x), rounds, calls * 10)
                    out[key] = row
                    print(f"{key}: {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}x)", flush=True)
    return out


PARTS = ("eval", "diffq", "file", "scaling", "lapq")


def measure_table(quick: bool, parts: tuple[str, ...] = PARTS,
                  previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rows of the issue-12 table (``quick``: fewer rounds and calls, no 16M scaling point). ``parts``: a subset
    of :data:`PARTS` (so a run fits a 10-minute hold of the bench lock); the other rows are kept from
    ``previous`` (the table of an earlier run), each part with its own load average and duration."""
    rounds, calls = (3, 3) if quick else (7, 5)
    table = dict(previous or {})
    rows: dict[str, Any] = dict(table.get("rows", {}))
    scaling = dict(table.get("scaling", {}))
    part_info: dict[str, Any] = dict(table.get("parts", {}))
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for part in parts:
            with timed_part(part_info, part, quick=quick):
                if part == "eval":
                    rows.update(eval_rows(rounds, calls))
                elif part == "diffq":
                    rows.update(diffq_rows(rounds, calls, folder))
                elif part == "file":
                    rows.update(file_rows(rounds, calls, folder, quick))
                elif part == "scaling":
                    scaling = scaling_rows(rounds, calls, folder, quick)
                elif part == "lapq":
                    rows.update(lapq_row(1 if quick else 3))
                else:
                    raise SystemExit(f"--parts: unknown part {part!r}; known: {', '.join(PARTS)}")
    loads = load_range(part_info) or (float("nan"), float("nan"))
    return {"rows": rows, "scaling": scaling, "goals": {k: list(v) for k, v in GOALS.items()},
            "threads": torch.get_num_threads(), "parts": part_info, "quick": quick,
            "seconds": sum(p["seconds"] for p in part_info.values()) if part_info else time.perf_counter() - total,
            "loadavg_start": [loads[0]], "loadavg_end": [loads[1]],
            "method": "interleaved rounds (order alternating), per round the per-call median of each side; "
                      "ratio = learnq / baseline per round; median and minimum over rounds; 1 torch thread"}


def table_lines(table: dict[str, Any]) -> list[str]:
    """Markdown: goal vs measured per row, then the ns-per-parameter scaling."""
    load = table.get("loadavg_start"), table.get("loadavg_end")
    loads = "" if None in load else (f"; load average (1 min, 2 cores shared) between {load[0][0]:.1f} and "
                                     f"{load[1][0]:.1f} at the starts and ends of its parts")
    lines = [f"**Issue 12: goal vs measured** (`benchmarks/speed.py measure{' --quick' if table['quick'] else ''}`; "
             f"{table['method']}; {table['seconds']:.0f} s{loads}). Goals are the issue's; a goal not met is "
             "discussed in the issue-12 notes below the table.", "",
             "| path | learnq ms | baseline ms | ratio (median) | ratio (min) | goal | met |",
             "| --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for key, (what, goal) in table["goals"].items():
        row = table["rows"].get(key)
        if row is None:
            lines.append(f"| {what} | - | - | - | - | {goal}x | not measured |")
            continue
        extra = ""
        if "file_mb_per_s" in row:
            extra = f" ({row['file_mb_per_s']:.0f} MB/s of file)"
        if "lapq" in row:
            extra = (f" ({row['lapq']['evals_per_second']:.1f} evals/s, {row['lapq']['loss_evals']} evals; "
                     f"accuracy {100 * row['lapq']['accuracy']:.2f} % vs MSE {100 * row['mse']['accuracy']:.2f} %)")
        met = "yes" if goal is not None and row["ratio_median"] <= goal else "no"
        lines.append(f"| {what}{extra} | {row['learnq_ms']:.2f} | {row['baseline_ms']:.2f} | "
                     f"{row['ratio_median']:.2f}x | {row['ratio_min']:.2f}x | {goal}x | {met} |")
    lines += ["", "| 4-bit MLP parameters | save ns/param (torch.save) | save ratio | load ns/param (torch) | "
              "load ratio |", "| ---: | ---: | ---: | ---: | ---: |"]
    for s in table["scaling"].values():
        lines.append(f"| {s['parameters']:,} | {s['save_ns_per_param']:.2f} ({s['torch_save_ns_per_param']:.2f}) | "
                     f"{s['save']['ratio_median']:.2f}x | {s['load_ns_per_param']:.2f} "
                     f"({s['torch_load_ns_per_param']:.2f}) | {s['load']['ratio_median']:.2f}x |")
    return lines


def floor_lines(table: dict[str, Any], floors: dict[str, Any]) -> list[str]:
    """Markdown: for each row whose goal is not met, the measured ratio next to the floor's (``speed_floors.py``)."""
    loads = load_range(floors.get("parts", {}))
    load = f"; load average {loads[0]:.1f}-{loads[1]:.1f} (1 min)" if loads else ""
    lines = ["**Floors of the goals not met** (`benchmarks/results/speed_floors.json`, `python benchmarks/"
             f"speed_floors.py`; the same method as the table{load}): the ratio of the part of the path that no "
             "learnq change removes, against the same baseline. A goal below its floor cannot be met by this "
             "design on this CPU.", "",
             "| path | measured | floor | goal | the floor is |", "| --- | ---: | ---: | ---: | --- |"]
    for key, (what, goal) in table["goals"].items():
        row, floor = table["rows"].get(key), floors.get("rows", {}).get(key)
        if row is None or floor is None or (goal is not None and row["ratio_median"] <= goal):
            continue
        extra = ""
        if key == "lapq_vs_mse":
            extra = (f" (Lp sweep {floor['lp_sweep_s']:.2f} s + evaluations {floor['evaluate_s']:.2f} s; LAPQ "
                     f"{floor['lapq_s']:.2f} s, MSE {floor['mse_s']:.2f} s)")
        elif "learnq_ms" in floor:
            extra = f" ({floor['learnq_ms']:.3g} ms vs {floor['baseline_ms']:.3g} ms)"
        lines.append(f"| {what} | {row['ratio_median']:.2f}x | {floor['ratio_median']:.2f}x | {goal}x | "
                     f"{floor['what']}{extra} |")
    return lines
