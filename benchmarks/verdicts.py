"""Paired, per-seed statistics behind the verdicts of BENCHMARKS.md (issue 17), from the benchmarks' result files.

Nothing is trained or quantized: this reads ``benchmarks/results/{ptq,regularizers,regularizers_asam,qat}.json``
(and ``dsmm_repro.json`` has its own report, ``dsmm_report.py``) and writes ``benchmarks/results/verdicts.md``: for
every comparison a verdict rests on, the per-seed differences (the same seed's float model, split and calibration
set on both sides), their mean ± sample std and the count of seeds where the first method is better / equal /
worse. One test image is 0.1 point on mnist5k's 1,000 test images, 0.28 on digits' 359. With ``--into
BENCHMARKS.md`` the tables go between its ``verdicts.py`` markers, the AdaRound 10,000 vs 1,000 iterations tables
(one pair per network with 10,000-iteration rows) between the ``verdicts.py adaround`` markers (issue 17's AdaRound
paragraph).

    python benchmarks/verdicts.py --into benchmarks/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- verdicts.py: begin -->", "<!-- verdicts.py: end -->"


def paired(label: str, a: dict[int, float], b: dict[int, float]) -> str:
    """One table row: per-seed a - b in points, mean ± std, better / equal / worse."""
    seeds = sorted(set(a) & set(b))
    diffs = [100 * (a[s] - b[s]) for s in seeds]
    if not diffs:
        return f"| {label} | (no common seed) | | |"
    m = statistics.fmean(diffs)
    spread = f"{m:+.2f} ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else f"{m:+.2f} (1 seed: no std)"
    signs = f"{sum(d > 1e-9 for d in diffs)} / {sum(abs(d) <= 1e-9 for d in diffs)} / {sum(d < -1e-9 for d in diffs)}"
    per = ", ".join(f"{s}: {d:+.1f}" for s, d in zip(seeds, diffs, strict=True))
    return f"| {label} | {per} | {spread} | {signs} |"


HEAD = ["| comparison | per seed (points) | mean ± std | better / equal / worse |", "| --- | --- | ---: | ---: |"]


#: LAPQ (seeds/001) Table 1, the W/A = 4/4 rows (top-1 %, ImageNet; first and last layers in float), as printed
LAPQ_TABLE1_W4A4: dict[str, dict[str, float]] = {
    "ResNet-18": {"lapq": 60.3, "kl": 31.937, "mse": 43.6, "aciq": 4.1},
    "ResNet-50": {"lapq": 70.0, "kl": 46.19, "mse": 36.4, "aciq": 3.3},
    "ResNet-101": {"lapq": 59.2, "kl": 49.948, "mse": 9.8, "aciq": 1.5},
    "Inception-V3": {"lapq": 38.6, "kl": 1.84, "mse": 2.2, "aciq": 0.5},
}
#: the W/A = 8/4 rows (no KLD row there); learnq's nearest configuration is W32A4 (float weights, 4-bit inputs)
LAPQ_TABLE1_W8A4: dict[str, dict[str, float]] = {
    "ResNet-18": {"lapq": 68.8, "mse": 68.0, "aciq": 65.528},
    "ResNet-50": {"lapq": 74.8, "mse": 74.0, "aciq": 68.92},
    "ResNet-101": {"lapq": 73.6, "mse": 72.0, "aciq": 66.966},
    "Inception-V3": {"lapq": 75.1, "mse": 74.3, "aciq": 66.42},
}
NAMES = {"lapq": "LAPQ", "kl": "KLD", "mse": "MMSE", "aciq": "ACIQ"}


def _order(values: dict[str, float]) -> str:
    return " > ".join(f"{NAMES[m]} {v:.2f}" for m, v in sorted(values.items(), key=lambda kv: -kv[1]))


def lapq_table1_section(path: Path) -> list[str]:
    """LAPQ's Table 1 rows next to learnq's means for the same methods: the order, and which of the table's
    statements (LAPQ first, ACIQ last at W4A4, KLD against MMSE) hold on each network."""
    runs = json.loads(path.read_text())["runs"]
    mean: dict[tuple[str, str, str], list[float]] = {}
    for r in runs:
        mean.setdefault((r["network"], r["row"], f"W{r['wbits']}A{r['abits']}"), []).append(100 * r["accuracy"])
    lines = [f"**LAPQ's Table 1 (seeds/001, ImageNet) against learnq's means over seeds** (`{path.name}`; learnq: "
             "LeNet-5, first and last layers in float, 512 calibration samples)", "",
             "| source | network | config | order (top-1 %) | LAPQ first | ACIQ last | KLD above MMSE |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def row(source: str, net: str, cfg: str, vals: dict[str, float]) -> str:
        first = max(vals, key=vals.get) == "lapq"  # type: ignore[arg-type]
        last = min(vals, key=vals.get) == "aciq"  # type: ignore[arg-type]
        kl = "-" if "kl" not in vals else ("yes" if vals["kl"] > vals["mse"] else "no")
        return (f"| {source} | {net} | {cfg} | {_order(vals)} | {'yes' if first else 'no'} | "
                f"{'yes' if last else 'no'} | {kl} |")

    for cfg, table, ours in (("W4A4", LAPQ_TABLE1_W4A4, "W4A4"), ("W8A4", LAPQ_TABLE1_W8A4, "W32A4")):
        for net, vals in table.items():
            lines.append(row("paper", net, cfg, vals))
        for net in ("mnist5k", "digits"):
            vals = {m: statistics.fmean(mean[(net, m, ours)]) for m in table["ResNet-18"] if (net, m, ours) in mean}
            if len(vals) == len(table["ResNet-18"]):
                lines.append(row("learnq", net, ours, vals))
    return lines + [""]


def ptq_section(path: Path) -> list[str]:
    """LAPQ's Table 1 (seeds/001): the order of the methods at W4A4 and W4A8, paired by seed."""
    runs = json.loads(path.read_text())["runs"]
    acc: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in runs:
        acc.setdefault((r["network"], r["row"], f"W{r['wbits']}A{r['abits']}"), {})[r["seed"]] = r["accuracy"]
    lines = [f"**LAPQ's Table 1 orders, paired by seed** (`{path.name}`)", "", *HEAD]
    pairs = [("lapq", "mse"), ("lapq", "mse+bc"), ("lapq", "aciq"), ("lapq", "kl"), ("mse", "aciq"),
             ("kl", "mse"), ("kl", "aciq")]
    for net in ("mnist5k", "digits"):
        for cfg in ("W4A4", "W4A8", "W2A8", "W32A4"):
            for x, y in pairs:
                if (net, x, cfg) in acc and (net, y, cfg) in acc:
                    lines.append(paired(f"{net} {cfg}: {x} - {y}", acc[(net, x, cfg)], acc[(net, y, cfg)]))
    return lines + [""]


ADAROUND_BEGIN, ADAROUND_END = "<!-- verdicts.py adaround: begin -->", "<!-- verdicts.py adaround: end -->"


def adaround_section(path: Path, network: str = "mnist5k") -> list[str]:
    """AdaRound at its 10,000-iteration default against the fast preset (1,000) and LAPQ / MSE on the same float
    model: means over seeds, then the per-seed differences (issue 17, point 3)."""
    runs = [r for r in json.loads(path.read_text())["runs"] if r["network"] == network]
    acc: dict[tuple[str, str], dict[int, float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        key = (r["row"], f"W{r['wbits']}A{r['abits']}")
        acc.setdefault(key, {})[r["seed"]] = r["accuracy"]
        cpu.setdefault(key, []).append(r["cpu_seconds"])
    cfgs = [c for c in ("W8A8", "W4A8", "W4A4", "W2A8", "W32A4") if ("adaround", c) in acc]
    rows = ("adaround", "adaround-fast", "lapq", "mse")

    def cell(vals: dict[int, float]) -> str:
        v = [100 * x for x in vals.values()]
        return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f} (1 seed)"

    lines = [f"**AdaRound, 10,000 iterations (`adaround`) against the fast preset (1,000, `adaround-fast`), {network} "
             f"LeNet: test accuracy (%), mean ± std over seeds; CPU s per quantization** (`{path.name}`)", "",
             "| row | seeds | " + " | ".join(cfgs) + " |", "| --- | --- | " + " | ".join("---:" for _ in cfgs) + " |"]
    for row in rows:
        seeds = sorted({s for c in cfgs for s in acc.get((row, c), {})})
        lines.append(f"| {row} | {','.join(map(str, seeds))} | "
                     + " | ".join(cell(acc[(row, c)]) if (row, c) in acc else "" for c in cfgs) + " |")
    for row in rows[:2]:
        lines.append(f"| {row}: CPU s | | " + " | ".join(f"{statistics.fmean(cpu[(row, c)]):.1f}" if (row, c) in cpu
                                                       else "" for c in cfgs) + " |")
    lines += ["", f"**The same, paired by seed ({network}; the same float model, split and calibration set on both "
              "sides)**", "", *HEAD]
    for cfg in cfgs:
        for x, y in (("adaround", "adaround-fast"), ("lapq", "adaround"), ("lapq", "adaround-fast"),
                     ("adaround", "mse")):
            if (x, cfg) in acc and (y, cfg) in acc:
                lines.append(paired(f"{cfg}: {x} - {y}", acc[(x, cfg)], acc[(y, cfg)]))
    return lines + [""]


def adaround_sections(path: Path) -> list[str]:
    """``adaround_section`` for every network with 'adaround' (10,000-iteration) rows, in the order of the runs."""
    runs = json.loads(path.read_text())["runs"]
    nets = dict.fromkeys(r["network"] for r in runs if r["row"] == "adaround")
    return [line for net in nets for line in adaround_section(path, net)]


def regularizers_section(path: Path, asam: Path | None) -> list[str]:
    """The SymReg/SatNL supplement (seeds/002) and heavy L2 (seeds/000): each method - L2, same seed."""
    runs = json.loads(path.read_text())["runs"]
    if asam is not None and asam.is_file():
        runs = runs + json.loads(asam.read_text())["runs"]

    def values(method: str, pick: Callable[[dict[str, Any]], float]) -> dict[int, float]:
        return {r["seed"]: pick(r) for r in runs if r["method"] == method}

    lines = [f"**Training-time methods against the L2 baseline of the same seed** (`{path.name}`"
             + (f", `{asam.name}`" if asam is not None and asam.is_file() else "") + "; naive per-tensor min-max "
             "PTQ, 8-bit activations)", "", *HEAD]
    methods = sorted({r["method"] for r in runs} - {"l2"}, key=lambda m: [r["method"] for r in runs].index(m))
    for method in methods:
        floats = (values(method, lambda r: r["float"]), values("l2", lambda r: r["float"]))
        lines.append(paired(f"{method} - l2: float", *floats))
        for scheme in ("symmetric", "affine"):
            for bits in ("3", "2"):
                def pick(r: dict[str, Any], s: str = scheme, b: str = bits) -> float:
                    return r["ptq"][s][b]

                lines.append(paired(f"{method} - l2: W{bits}A8 {scheme}", values(method, pick), values("l2", pick)))
    return lines + [""]


def qat_section(path: Path) -> list[str]:
    """DiffQ (seeds/003) and the nested layer (seeds/004): every QAT point against the float model of its seed."""
    runs = json.loads(path.read_text())["runs"]
    by: dict[str, dict[int, float]] = {}
    for r in runs:
        by.setdefault(r["label"], {})[r["seed"]] = r["accuracy"]
    lines = [f"**QAT points against the float model of the same seed** (`{path.name}`)", "", *HEAD]
    for label, vals in by.items():
        if label != "float":
            lines.append(paired(f"{label} - float", vals, by["float"]))
    for a, b in (("diffq λ=1000", "ste w2"), ("diffq λ=1000", "lsq w2"), ("lsq w2", "ste w2")):
        if a in by and b in by:
            lines.append(paired(f"{a} - {b}", by[a], by[b]))
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--into", type=Path, default=None,
                   help="also write the tables between the verdicts.py markers of this file (BENCHMARKS.md)")
    args = p.parse_args(argv)
    r = args.results
    lines = ["<!-- generated by benchmarks/verdicts.py from the result files named in each table -->", ""]
    lines += lapq_table1_section(r / "ptq.json")
    lines += ptq_section(r / "ptq.json")
    lines += regularizers_section(r / "regularizers.json", r / "regularizers_asam.json")
    lines += qat_section(r / "qat.json")
    adaround = adaround_sections(r / "ptq.json")
    out = r / "verdicts.md"
    out.write_text("\n".join(lines + adaround) + "\n", encoding="utf-8")
    if args.into is not None:
        from md_section import replace_section  # benchmarks/md_section.py

        replace_section(args.into, BEGIN, END, "\n".join(lines))
        replace_section(args.into, ADAROUND_BEGIN, ADAROUND_END, "\n".join(adaround))
    print("\n".join(lines + adaround))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
