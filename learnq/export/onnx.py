"""``learnq.export.to_onnx``: a learnq model as an ONNX graph with QuantizeLinear/DequantizeLinear nodes, and
onnxruntime helpers to run and evaluate the file (ONNX operators QuantizeLinear-13 / DequantizeLinear-13).

    report = to_onnx(model, example_input, "model.onnx")   # ExportReport: what is Q/DQ, what is float and why
    evaluate_onnx("model.onnx", splits.test)                 # {"loss", "accuracy", "n"} with onnxruntime (CPU)

Mechanism: learnq writes the graph itself (:mod:`learnq.export.graph` over a ``torch.fx`` trace, with
``onnx.helper``) instead of calling ``torch.onnx.export``. In torch 2.13 the default (dynamo) exporter needs
``onnxscript``, and the TorchScript one (``dynamo=False``) is deprecated; neither writes a weight as integer codes +
DequantizeLinear (``torch.fake_quantize_*`` becomes a QuantizeLinear computed at run time on a float initializer),
and ``fake_quantize_per_tensor_affine`` multiplies by ``1/scale`` where learnq divides, so values at rounding ties
differ. Writing the graph keeps learnq's codes, steps and zero points as they are (see docs/export.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from learnq import __version__
from learnq.errors import ConfigError, DataError, ModelError
from learnq.export.graph import GraphWriter
from learnq.export.report import ExportReport

DEFAULT_OPSET = 13
MIN_OPSET = 13
MAX_OPSET = 21  # the newest opset the exporter is tested with (int4/uint4/int16 codes from 21)


def _require(module: str) -> Any:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"ONNX export needs the '{module}' package; install it with: pip install 'learnq[onnx]'")
    return importlib.import_module(module)


def check_opset(opset: object) -> int:
    """Validate an ONNX opset for the exporter (an int from MIN_OPSET to MAX_OPSET)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be an integer from {MIN_OPSET} (per-channel QuantizeLinear/DequantizeLinear) "
                          f"to {MAX_OPSET}, got {opset!r}")
    return opset


def check_output_path(path: str | os.PathLike) -> Path:
    """The ONNX file to write: its directory must exist and it must not be a directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"the ONNX output {p} is a directory; give a file name such as {p / 'model.onnx'}")
    if not p.parent.is_dir():
        raise ConfigError(f"the ONNX output's directory {p.parent} does not exist; create it first")
    return p


def to_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
            dynamic_batch: bool = True, verify: bool = True, device: str = "cpu", input_name: str = "input",
            output_name: str = "output") -> ExportReport:
    """Write ``model`` (with learnq's quantized weights and activation quantizers) to ``path`` as ONNX.

    example_input: one float32 batch ``(N, ...)``; it fixes every size but the batch size (dynamic unless
    ``dynamic_batch`` is False). The model is run in eval mode on ``device`` (and moved there). Quantized weights
    whose grid ONNX can carry become integer codes + DequantizeLinear, the others their float32 values ŵ; 8-bit
    activation quantizers become QuantizeLinear -> DequantizeLinear, the others a float32 emulation; the report says
    which and why. verify: run the file with onnxruntime on ``example_input`` and record the largest difference
    from the model's output in ``report.check``. Raises ConfigError (bad options, onnx missing), ModelError (an
    operation the exporter cannot write).
    """
    onnx = _require("onnx")
    check_opset(opset)
    out = check_output_path(path)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 1 or example_input.shape[0] < 1:
        raise ConfigError("example_input must be a tensor batch of shape (N, ...) with N >= 1")
    if example_input.dtype != torch.float32:
        raise ConfigError(f"example_input must be float32 (the exported graph computes in float32), got "
                          f"{example_input.dtype}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    was_training = model.training
    model.to(dev).eval()
    example = example_input.to(dev)
    try:
        with torch.no_grad():
            writer = GraphWriter(model, example, opset, dynamic_batch=dynamic_batch, input_name=input_name,
                                 output_name=output_name)
            graph, in_shape, out_shape = writer.run()
            expected = model(example).detach().float().cpu()
    finally:
        model.train(was_training)
    helper = onnx.helper
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="learnq", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    report = ExportReport(path=str(out), opset=opset, input_shape=in_shape, output_shape=out_shape,
                          tensors=writer.records, unquantized=writer.unquantized, node_counts=writer.node_counts())
    summary = {"tensors": [{"name": t.name, "kind": t.kind, "export": t.export, "reason": t.reason}
                           for t in report.tensors]}
    helper.set_model_props(proto, {"learnq_version": __version__, "learnq_export": json.dumps(summary)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx's checker raises its own ValidationError / InferenceError
        raise ModelError(f"the ONNX graph learnq wrote does not pass onnx.checker ({exc}); please report this") from exc
    try:
        onnx.save(proto, str(out))
    except OSError as exc:
        raise ConfigError(f"cannot write the ONNX file {out}: {exc.strerror or exc}") from exc
    report.file_bytes = out.stat().st_size
    if verify:
        report.check = compare(out, example_input.cpu(), expected)
    return report


def compare(path: str | os.PathLike, inputs: torch.Tensor, expected: torch.Tensor) -> dict[str, Any]:
    """onnxruntime's output on ``inputs`` against ``expected`` (the torch model's): ``max_abs_diff`` with the
    default optimizations (integer kernels), ``max_abs_diff_reference`` with none (the graph as written), and the
    share of rows whose argmax agrees (default optimizations)."""
    got = run_onnx(path, inputs)
    ref = run_onnx(path, inputs, optimize=False)
    agree = None
    if got.ndim >= 2 and got.shape[-1] > 1:
        agree = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    return {"n": int(inputs.shape[0]), "max_abs_diff": float((got - expected).abs().max()),
            "max_abs_diff_reference": float((ref - expected).abs().max()), "argmax_agreement": agree}


def _session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True) -> Any:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile
        raise ConfigError(f"onnxruntime cannot load {path}: {exc}") from exc


def run_onnx(path: str | os.PathLike, inputs: torch.Tensor, *, batch_size: int = 256, threads: int | None = None,
             optimize: bool = True) -> torch.Tensor:
    """The ONNX file's output for ``inputs`` (float32, (N, ...)), run by onnxruntime on the CPU in batches.

    optimize: onnxruntime's default graph optimizations, which fuse DequantizeLinear -> Conv/Gemm -> QuantizeLinear
    into integer kernels (QLinearConv, QGemm) whose requantization rounds differently from float32; False runs every
    node as written (the graph's reference semantics, learnq's values to float32 rounding)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    session = _session(path, threads, optimize)
    name = session.get_inputs()[0].name
    x = inputs.detach().float().cpu()
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size].numpy())})[0]
            for i in range(0, x.shape[0], batch_size)]
    return torch.from_numpy(np.concatenate(outs)) if outs else torch.empty(0)


def evaluate_onnx(path: str | os.PathLike, data: Dataset | DataLoader, *, batch_size: int = 256,
                  threads: int | None = None, optimize: bool = True) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and sample count of the ONNX classifier on ``data`` ((input, label) pairs),
    as :func:`learnq.evaluation` reports them for the torch model (``optimize``: see
    :func:`run_onnx`)."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    session = _session(path, threads, optimize)
    name = session.get_inputs()[0].name
    loss, correct, n = 0.0, 0, 0
    for batch in loader:
        x, y = batch[0], batch[1]
        logits = torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.float().numpy())})[0])
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += int(y.shape[0])
    if n == 0:
        raise DataError("the evaluation data set is empty; give at least one (input, target) pair")
    return {"loss": loss / n, "accuracy": correct / n, "n": n}


__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "check_opset", "check_output_path", "compare", "evaluate_onnx",
           "run_onnx", "to_onnx"]
