"""What both sides of the peers benchmark share: the prepared float model and data of one seed, the timing protocol,
the QAT training loop, the result row, and the inspection of a saved artifact (does it store low-bit codes?).

Runs in ``.venv`` (learnq's side) and ``.venv-bench`` (the peers); needs torch, numpy, safetensors and learnq from the
checkout; onnx only for the peers' ONNX artifacts (imported where used).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learnq.pipeline.models import model_from_spec

DATA_FILE, STATE_FILE, INFO_FILE = "peers-data.safetensors", "peers-float.safetensors", "peers-setup.json"
LAYERS = ("features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2", "classifier.fc3")


# ------------------------------------------------------------------------------------------------------ the setup
@dataclass
class Bench:
    """One seed's float LeNet, its data (the same tensors on both sides) and the run's options. ``info``: the
    learnq model spec (``model``), float accuracy, sizes (written by ``benchmarks/peers.py``)."""

    seed: int
    folder: Path  # the seed's cache folder (peers-*.safetensors, peers-setup.json)
    tmp: Path  # artifacts of this process
    info: dict
    tensors: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    options: dict = field(default_factory=dict)  # qat_epochs, qat_lr, adaround_iterations, rounds, quick

    @classmethod
    def load(cls, folder: Path, tmp: Path, options: dict) -> Bench:
        from safetensors.torch import load_file

        info = json.loads((folder / INFO_FILE).read_text())
        return cls(info["seed"], folder, tmp, info, load_file(str(folder / DATA_FILE)),
                   load_file(str(folder / STATE_FILE)), options)

    def build(self) -> nn.Module:
        """A freshly built LeNet (random weights), eval mode: what a reload starts from."""
        return model_from_spec(self.info["model"], device="cpu").eval()

    def float_model(self) -> nn.Module:
        model = self.build()
        model.load_state_dict(self.state)
        return model.eval()

    def __getattr__(self, name: str) -> torch.Tensor:  # x_train, y_train, x_calib, y_calib, x_test, y_test
        tensors = self.__dict__.get("tensors") or {}
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    @property
    def model(self) -> nn.Module:
        """The float model (one instance; callers copy it: what the peer_checks helpers expect as ``s.model``)."""
        if "_model" not in self.__dict__:
            self.__dict__["_model"] = self.float_model()
        return self.__dict__["_model"]

    @property
    def calib(self) -> torch.Tensor:
        return self.x_calib

    def calib_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x_calib, self.y_calib)

    def calib_batches(self, batch: int = 64) -> list[torch.Tensor]:
        return list(self.x_calib.split(batch))

    def artifact(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def layer_numels(self) -> dict[str, int]:
        model = self.build()
        return {name: model.get_submodule(name).weight.numel() for name in LAYERS}


@torch.no_grad()
def accuracy(model: Callable, x: torch.Tensor, y: torch.Tensor, *, set_eval: bool = True) -> float:
    if set_eval and isinstance(model, nn.Module):
        model.eval()
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def max_logit_diff(a: Callable, b: Callable, x: torch.Tensor) -> float:
    return float((a(x).float() - b(x).float()).abs().max())


# ------------------------------------------------------------------------------------------------------ the row
@dataclass
class Row:
    """One (library, method, setting, seed); the attribute names the peer_checks helpers set are kept."""

    library: str
    method: str
    setting: str
    seed: int
    status: str = "ok"  # ok | error | not supported | pending
    acc: float | None = None  # the quantized model in memory
    acc_artifact: float | None = None  # the artifact, saved and reloaded into a fresh model (or run by onnxruntime)
    reload_diff: float | None = None  # max |logit difference| reloaded vs in memory (None: not comparable)
    seconds: list[float] = field(default_factory=list)  # the quantization call(s), per timed round
    mse_seconds: list[float] = field(default_factory=list)  # learnq's MSE at the same setting, same process
    bytes: int | None = None
    artifact: str = ""  # what was saved (files)
    stores: str = ""  # dtype summary of the artifact's tensors
    layers: dict = field(default_factory=dict)  # per quantized layer: how its weight is stored
    low_bit: str = ""  # verdict from ``layers``
    note: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.seconds or not self.mse_seconds:
            return None
        return statistics.median(self.seconds) / statistics.median(self.mse_seconds)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out["ratio"] = self.ratio
        return out


def fail(row: Row, exc: BaseException, status: str = "error") -> None:
    first = (str(exc).strip().splitlines() or [""])[0]
    row.status = status
    row.error = f"{type(exc).__name__}: {' '.join(first.split())[:400]}"
    if status == "error":
        row.extra["traceback"] = traceback.format_exc(limit=8)


# ------------------------------------------------------------------------------------------------------ timing
def timed(run: Callable[[], Any], baseline: Callable[[], Any], rounds: int, warmup: bool) -> tuple[Any, list[float],
                                                                                                 list[float]]:
    """``rounds`` interleaved rounds of ``run()`` and ``baseline()`` (wall time, ``time.perf_counter``), the order
    alternating each round; ``warmup``: one untimed ``run()`` first (JIT-compiled extensions, lazy imports). Returns
    the last ``run()`` result and both lists of seconds."""
    if warmup:
        run()
    result, mine, base = None, [], []
    for i in range(rounds):
        order = ((run, mine), (baseline, base)) if i % 2 == 0 else ((baseline, base), (run, mine))
        for fn, out in order:
            start = time.perf_counter()
            value = fn()
            out.append(time.perf_counter() - start)
            if fn is run:
                result = value
    return result, mine, base


def learnq_mse(bench: Bench, model: nn.Module, wbits: int, abits: int) -> Callable[[], Any]:
    """The baseline every ratio divides by: ``learnq.ptq.quantize(method="mse")`` at the row's setting."""
    from learnq.ptq import quantize

    data = bench.calib_dataset()
    return lambda: quantize(model, data, method="mse", wbits=wbits, abits=abits, skip_first_last=False,
                            progress=False, seed=bench.seed)


# ------------------------------------------------------------------------------------------------------ QAT loop
def train(model: nn.Module, bench: Bench, params: Iterable, extra_loss: Callable[[], torch.Tensor] | None = None,
          step_hook: Callable[[], None] | None = None) -> nn.Module:
    """The one fine-tuning loop of every QAT row: Adam (lr ``qat_lr``), cosine schedule over ``qat_epochs`` epochs,
    batch 64, seeded order, cross-entropy (+ ``extra_loss()`` after the forward, e.g. DiffQ's size penalty)."""
    epochs, lr = bench.options["qat_epochs"], bench.options["qat_lr"]
    x, y = bench.x_train, bench.y_train
    gen = torch.Generator().manual_seed(bench.seed)
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(y) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step_hook is not None:
                step_hook()
    return model.eval()


def fresh_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


# ------------------------------------------------------------------------------------------------------ artifacts
@dataclass
class Tensor:
    """One tensor stored in an artifact; ``lo``/``hi``: its smallest and largest value when it holds integers."""

    name: str
    dtype: str
    numel: int
    nbytes: int
    lo: int | None = None
    hi: int | None = None


def tensor_record(name: str, t: torch.Tensor) -> Tensor:
    dtype = str(t.dtype).replace("torch.", "")
    integer = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    lo = hi = None
    if integer and t.numel():
        lo, hi = int(t.min()), int(t.max())
    return Tensor(name, dtype, t.numel(), t.numel() * t.element_size(), lo, hi)


def torch_tensors(state: dict) -> list[Tensor]:
    """Records of a state dict; tensor subclasses (torchao, quanto) are opened into their inner tensors."""
    out: list[Tensor] = []

    def add(name: str, t: Any) -> None:
        if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
            for inner in t.__tensor_flatten__()[0]:
                add(f"{name}.{inner}", getattr(t, inner))
        elif isinstance(t, torch.Tensor):
            out.append(tensor_record(name, t))

    for name, t in state.items():
        add(name, t)
    return out


def onnx_tensors(path: Path) -> list[Tensor]:
    """Records of an ONNX model's initializers (external data read from beside it); int4 is two codes a byte."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = []
    for init in onnx.load(str(path)).graph.initializer:
        arr = numpy_helper.to_array(init)
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        packed = name in ("int4", "uint4")
        nbytes = (arr.size + 1) // 2 if packed else arr.nbytes
        lo = hi = None
        if arr.size and (packed or np.issubdtype(arr.dtype, np.integer)):
            values = arr.astype(np.int64)
            lo, hi = int(values.min()), int(values.max())
        out.append(Tensor(init.name, name, int(arr.size), int(nbytes), lo, hi))
    return out


def onnx_files(path: Path) -> tuple[list[Path], int]:
    """The .onnx file and the external data files it references (not the leftovers beside it), and how many bytes
    of those data files no initializer references (an exporter's stale data kept in a referenced file)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    used: dict[str, int] = {}
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        if "location" in ext:
            used[ext["location"]] = used.get(ext["location"], 0) + int(ext.get("length", 0))
    files = [path.parent / n for n in sorted(used)]
    unused = sum(max(0, f.stat().st_size - used[f.name]) for f in files)
    return [path, *files], unused


def files_bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def dtype_summary(tensors: list[Tensor]) -> str:
    """``dtype elements/bytes`` per dtype, largest first."""
    agg: dict[str, list[int]] = {}
    for t in tensors:
        a = agg.setdefault(t.dtype, [0, 0])
        a[0] += t.numel
        a[1] += t.nbytes
    return ", ".join(f"{k} {n} el/{b} B" for k, (n, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]))


def layer_storage(tensors: list[Tensor], numels: dict[str, int]) -> dict[str, dict]:
    """How each layer's weight is stored. Candidates: the tensors named after it (``<layer>.weight...``) and those
    of its size (LeNet's five weights have distinct sizes; exporters rename them): integer codes one per element
    (numel = the weight's; their value range gives the code bits), codes packed into uint8 (a uint8 tensor named
    after the layer with fewer elements than the weight but at least an eighth, or of exactly ceil(n*b/8) bytes for
    b = 1..4: b-bit codes, padding allowed), or float values. Codes win; a float tensor of the weight's size beside
    them is reported as ``float_copy``."""
    out = {}
    for layer, n in numels.items():
        named = [t for t in tensors if t.name.startswith(f"{layer}.weight")]
        ints = [t for t in tensors if t.numel == n and t.lo is not None]
        packed = [t for t in named if t.dtype == "uint8" and n / 8 <= t.numel < n]
        packed += [t for b in (1, 2, 3, 4) for t in tensors
                   if t.dtype == "uint8" and t.numel == math.ceil(n * b / 8) and t not in packed]
        floats = [t for t in tensors if t.numel == n and t.lo is None]
        if ints:
            t = max(ints, key=lambda t: t in named)
            rec = {"dtype": t.dtype, "stored_bits": 8 * t.nbytes / n,
                   "code_bits": max(1, math.ceil(math.log2(t.hi - t.lo + 1))), "range": [t.lo, t.hi]}
        elif packed:
            t = packed[0]
            bits = max(1, int(8 * t.nbytes / n + 1e-9))
            rec = {"dtype": f"uint8 ({bits}-bit packed)", "stored_bits": 8 * t.nbytes / n, "code_bits": bits}
        elif floats:
            t = floats[0]
            rec = {"dtype": t.dtype, "stored_bits": 8 * t.nbytes / n, "code_bits": None}
        else:
            t, rec = None, {"dtype": "not found", "stored_bits": None, "code_bits": None}
        rec.update(tensor=t.name if t else None, numel=n, float_copy=bool((ints or packed) and floats))
        out[layer] = rec
    return out


def verdict(layers: dict[str, dict], wbits: int) -> str:
    """A short answer to "does the artifact store low-bit codes?" from :func:`layer_storage` (or learnq's reader):
    the bits per weight as stored over the layers held as integer codes; layers whose storage is wider than the
    codes need (a wider container, not a few bits of packing padding) and layers held in float are named."""
    if not layers:
        return "unknown"
    coded = {k.rsplit(".", 1)[-1]: v for k, v in layers.items() if v.get("code_bits")}
    float_layers = [k.rsplit(".", 1)[-1] for k, v in layers.items() if not v.get("code_bits")]
    if not coded:
        return f"no: {'/'.join(sorted({v['dtype'] for v in layers.values()}))} weights"
    overall = sum(v["stored_bits"] * v["numel"] for v in coded.values()) / sum(v["numel"] for v in coded.values())
    wide = {k: v for k, v in coded.items() if v["stored_bits"] >= wbits + 1}
    if not wide:
        text = f"yes: {overall:.2f} bits/weight"
    elif len(wide) == len(coded):
        codes = max(v["code_bits"] for v in coded.values())
        text = f"{codes}-bit codes, {overall:.2f} bits/weight stored"
    else:
        parts = ", ".join(f"{k} {v['code_bits']}-bit codes in {v['stored_bits']:.0f} bits" for k, v in wide.items())
        text = f"partly: {parts}; {overall:.2f} bits/weight"
    if float_layers:
        text += f"; float: {', '.join(float_layers)}"
    if any(v.get("float_copy") for v in coded.values()):
        text += "; float copy kept"
    return text


def inspect(row: Row, tensors: list[Tensor], numels: dict[str, int], wbits: int) -> None:
    row.stores = dtype_summary([t for t in tensors if t.numel >= 64])
    row.layers = layer_storage(tensors, numels)
    row.low_bit = verdict(row.layers, wbits)
