"""Smoke test of the peer quantization libraries in the benchmark-only venv ``.venv-bench`` (issues 14-17).

It proves that each peer installed by ``benchmarks/envs/setup_bench_env.sh`` imports beside torch 2.13.0+cpu and
runs the entry points the side-by-side benchmarks need, on learnq's LeNet (``build_lenet``, channels 6/16, hidden
120/84) trained for a few seconds on sklearn's 8x8 digits, with 512 calibration images. It is not a benchmark: no
timing is compared and the accuracies are one seed on 600 test images. For each check it records the accuracy of
the quantized model in memory, the accuracy of the saved artifact after reloading it (where the peer can reload or
run it here), the artifact's bytes on disk, and what the artifact stores (dtype, elements, bytes of its tensors):
whether it really holds low-bit codes. Checks marked ``expect_fail`` document a path that is known not to work here
(benchmarks/envs/README.md); they pass while the documented error occurs, and fail the run once the peer fixes it.

    PYTHONPATH=. .venv-bench/bin/python benchmarks/peers_smoke.py               # all peers, ~2-3 min, 1 thread
    PYTHONPATH=. .venv-bench/bin/python benchmarks/peers_smoke.py --only nncf,torchao --out /tmp/peers.json

The checks of each peer are in ``benchmarks/peer_checks/check_<peer>.py``. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry stays off (its only effect); no network here anyway
os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # learnq from the checkout; peer_checks/ beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from learnq.pipeline.models import build_mobilenetv2_small  # noqa: E402
from learnq.pipeline.models.convnets import build_lenet  # noqa: E402

PEERS = ("brevitas", "nncf", "torchao", "quanto", "coremltools", "aimet", "onnxruntime", "diffq")
DISTS = {
    "brevitas": "brevitas",
    "nncf": "nncf",
    "torchao": "torchao",
    "quanto": "optimum-quanto",
    "coremltools": "coremltools",
    "aimet": "aimet-torch",
    "onnxruntime": "onnxruntime",
    "diffq": "diffq",
}
N_CALIB = 512


@dataclass
class Setup:
    """The float model, data and a scratch directory every check shares (never modified by a check)."""

    model: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    tmp: Path
    float_acc: float = 0.0
    float_bytes: int = 0

    @property
    def calib(self) -> torch.Tensor:
        return self.x_train[:N_CALIB]

    def calib_batches(self, batch: int = 64) -> list[torch.Tensor]:
        return [self.calib[i : i + batch] for i in range(0, N_CALIB, batch)]

    def artifact(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Row:
    peer: str
    check: str
    ok: bool = False
    acc: float | None = None  # quantized model in memory
    acc_artifact: float | None = None  # the saved artifact, reloaded (or run by onnxruntime)
    bytes: int | None = None  # artifact on disk
    stores: str = ""  # what the artifact's tensors are
    note: str = ""
    error: str = ""
    expect_fail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Recorder:
    """Runs each check in ``with rec.check(peer, name) as row:``; an exception fails that check only."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    @contextlib.contextmanager
    def check(self, peer: str, name: str, expect_fail: str = ""):
        row = Row(peer, name, expect_fail=expect_fail)
        start = time.perf_counter()
        try:
            yield row
            row.ok = not expect_fail
            if expect_fail:
                row.error = "expected failure did not happen: the peer may have fixed it; update README.md"
        except Exception as exc:  # a failing check is a result, not a crash
            first = (str(exc).strip().splitlines() or [""])[0]
            row.error = f"{type(exc).__name__}: {first[:300]}"
            row.ok = bool(expect_fail) and expect_fail in row.error
            if not row.ok:
                row.extra["traceback"] = traceback.format_exc(limit=6)
        finally:
            row.seconds = round(time.perf_counter() - start, 3)
            self.rows.append(row)


# ---------------------------------------------------------------------------------------------------- shared helpers
def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:-600], y[:-600], x[-600:], y[-600:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3, seed: int = 0,
          step_hook=None) -> nn.Module:
    """Adam, batch 64; ``step_hook()`` runs after each optimizer step (coremltools' palettizer.step)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step_hook is not None:
                step_hook()
    return model.eval()


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, set_eval: bool = True) -> float:
    """Top-1 on (x, y); ``set_eval=False`` for exported graphs, whose .eval() raises (the caller sets them)."""
    if set_eval:
        model.eval()
    return round((model(x).argmax(1) == y).float().mean().item(), 4)


def ort_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return round(float((out.argmax(1) == y.numpy()).mean()), 4)


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summarize(arrays) -> str:
    """``dtype elements/bytes`` per dtype, largest first: what a file's tensors really are."""
    agg: dict[str, list[int]] = {}
    for dtype, numel, nbytes in arrays:
        a = agg.setdefault(dtype, [0, 0])
        a[0] += numel
        a[1] += nbytes
    parts = sorted(agg.items(), key=lambda kv: -kv[1][1])
    return ", ".join(f"{k} {n} el/{b} B" for k, (n, b) in parts)


def torch_summary(tensors: dict) -> str:
    """Summary of a state dict; tensor subclasses (torchao) are opened into their inner tensors."""
    out = []

    def add(t):
        if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
            for name in t.__tensor_flatten__()[0]:
                add(getattr(t, name))
        elif isinstance(t, torch.Tensor):
            out.append((str(t.dtype).replace("torch.", ""), t.numel(), t.numel() * t.element_size()))

    for t in tensors.values():
        add(t)
    return summarize(out)


def onnx_summary(path: Path) -> str:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))  # external data is loaded from beside the file
    arrays = []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        nbytes = len(init.raw_data) if init.raw_data else arr.nbytes
        if name in ("int4", "uint4"):
            nbytes = (arr.size + 1) // 2  # ONNX packs two 4-bit values a byte
        arrays.append((name, int(arr.size), int(nbytes)))
    return summarize(arrays)


def onnx_int_range(path: Path) -> tuple[int, int]:
    """Smallest and largest integer code over the integer initializers of >= 64 elements (the weights)."""
    import onnx
    from onnx import numpy_helper

    lo, hi = 0, 0
    for init in onnx.load(str(path)).graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size >= 64 and np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize == 1:
            lo, hi = min(lo, int(arr.min())), max(hi, int(arr.max()))
    return lo, hi


def export_float_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """TorchScript exporter (dynamo=False): one self-contained file with a dynamic batch axis."""
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def setup(tmp: Path) -> Setup:
    x_train, y_train, x_test, y_test = digits()
    torch.manual_seed(0)
    model = train(build_lenet((1, 8, 8), 10), x_train, y_train, epochs=20)
    s = Setup(model, x_train, y_train, x_test, y_test, tmp)
    s.float_acc = accuracy(model, x_test, y_test)
    torch.save(model.state_dict(), tmp / "float.pt")
    s.float_bytes = disk_bytes(tmp / "float.pt")
    return s


def mobilenet(s: Setup) -> nn.Module:
    """learnq's MobileNetV2-small, random weights with BatchNorm statistics of the digits (for CLE: depthwise)."""
    torch.manual_seed(0)
    m = build_mobilenetv2_small((1, 8, 8), 10).train()
    with torch.no_grad():
        m(s.x_train[:512])
    return m.eval()


def print_table(s: Setup, rows: list[Row], versions: dict) -> None:
    print(f"\nfloat LeNet: accuracy {s.float_acc}, state dict {s.float_bytes} B; torch {torch.__version__}")
    head = f"{'peer':12} {'check':38} {'ok':4} {'acc':>6} {'art.acc':>7} {'bytes':>8} {'s':>6}  stores / note / error"
    print(head)
    print("-" * len(head))
    for r in rows:
        tail = "; ".join(t for t in (r.stores, r.note, r.error) if t)
        acc = "" if r.acc is None else f"{r.acc:.4f}"
        art = "" if r.acc_artifact is None else f"{r.acc_artifact:.4f}"
        size = "" if r.bytes is None else str(r.bytes)
        ok = ("xfail" if r.expect_fail else "ok") if r.ok else "FAIL"
        print(f"{r.peer:12} {r.check:38} {ok:5} {acc:>6} {art:>7} {size:>8} {r.seconds:6.1f}  {tail}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "learnq-peers-smoke.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="write the artifacts here instead of a temp dir")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    sys.modules.setdefault("peers_smoke", sys.modules[__name__])  # the checks import these helpers, not a copy

    rec = Recorder()
    versions = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="peers-smoke-") as tmpdir:
        tmp = args.keep or Path(tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        s = setup(tmp)
        for peer in chosen:
            try:
                versions[peer] = importlib.metadata.version(DISTS[peer])
            except importlib.metadata.PackageNotFoundError:
                versions[peer] = "not installed"
            print(f"== {peer} {versions[peer]}", flush=True)
            checks = importlib.import_module(f"peer_checks.check_{peer}")
            with rec.check(peer, "import") as row:
                getattr(checks, f"import_{peer}")()
                row.note = f"version {versions[peer]}"
            if rec.rows[-1].ok:
                getattr(checks, f"run_{peer}")(s, rec)
        if torch.__version__.split("+")[0] != "2.13.0":
            rec.rows.append(Row("torch", "version", error=f"torch is {torch.__version__}, expected 2.13.0"))
    print_table(s, rec.rows, versions)
    result = {
        "torch_threads": args.threads,
        "versions": versions,
        "float": {"acc": s.float_acc, "bytes": s.float_bytes, "model": "learnq build_lenet((1, 8, 8), 10)"},
        "rows": [r.__dict__ for r in rec.rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    failed = [f"{r.peer}/{r.check}" for r in rec.rows if not r.ok]
    print(f"results: {args.out}; {len(rec.rows) - len(failed)} passed, {len(failed)} failed" +
          (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
