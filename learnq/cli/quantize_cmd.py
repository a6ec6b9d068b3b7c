"""``learnq quantize MODEL_FILE --method M --wbits B --abits B --calib N``: post-training quantization of a pipeline
model file (learnq.ptq.quantize; LAPQ seeds/001 §5 for the W/A bit configurations).

The file's metadata (written by ``learnq train`` / ``run``) names the network (``model``) and the data set with its
preprocessing (``data``): the network is rebuilt and loaded, the calibration set is ``N`` samples drawn from the
training split (the same seeded stratified draw as the recipe's, with ``calib_size = N``), the model is quantized
and written to ``--out`` (default ``<file stem>.<method>-w<B>a<B>.safetensors`` beside it), then reloaded from that
file and evaluated on the test split, so the accuracy printed is that of the file. ``learnq eval OUT`` and
``learnq.load(OUT, model)`` read it back (activation quantizers included). ``--json`` prints ``accuracy``,
``file_bytes``, ``calib_seconds``, ``loss_evals`` and more. ``--codec ans`` entropy-codes the codes in the file
(:mod:`learnq.entropy_codec`). The command builds the same :class:`learnq.ptq.PTQ`
config as Python and recipes (same defaults), and the file records it (metadata ``ptq_config``).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from learnq.act.integer_graph import TARGETS
from learnq.checkpoint import load, save
from learnq.cli.common import add_common, print_json, show_progress
from learnq.entropy_codec import CODECS
from learnq.errors import ConfigError
from learnq.pipeline.data import dataset_from_preprocessing
from learnq.pipeline.model_files import EVAL_BATCH, rebuild, resolve_model_file
from learnq.pipeline.models import model_from_spec
from learnq.pipeline.train import evaluate, set_seed
from learnq.ptq.api import quantize
from learnq.ptq.config import PTQ
from learnq.ptq.registry import PTQ_METHODS, available_methods, get_ptq_method

BITS_HELP = "bits (1..16, or 32 to leave them in float)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="post-training quantization of a model file with a calibration set",
        description="Quantize the weights and activations of a model file written by learnq train/run after training "
                    "(PTQ), write the quantized model file and print its test accuracy.")
    parser.add_argument("path", help="a model file (.safetensors) written by learnq train/run, or a run directory")
    parser.add_argument("--method", default=PTQ.method,
                        help=f"PTQ method: {', '.join(available_methods())} (default: {PTQ.method})")
    parser.add_argument("--wbits", type=int, default=PTQ.wbits, help=f"weight {BITS_HELP} (default {PTQ.wbits})")
    parser.add_argument("--abits", type=int, default=PTQ.abits, help=f"activation {BITS_HELP} (default {PTQ.abits})")
    parser.add_argument("--calib", type=int, default=512,
                        help="calibration samples drawn from the training split (default 512)")
    parser.add_argument("--granularity", default=PTQ.granularity,
                        help="weight granularity: channel (default, one step per output channel), tensor, column, "
                             "axis:K, group:G")
    parser.add_argument("--bias-correction", action="store_true",
                        help="per-channel bias correction of the quantized weights (Banner et al.)")
    parser.add_argument("--equalize", action="store_true",
                        help="cross-layer equalization and high-bias absorption (DFQ, Nagel et al. 2019) after "
                             "BatchNorm folding, before the method")
    parser.add_argument("--skip-first-last", choices=("yes", "no"), default=None,
                        help="leave the first and last layers in float (default: the method's choice)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. p=3.0 for lp or distribution=gaussian for aciq (JSON values)")
    parser.add_argument("--target", choices=TARGETS, default=PTQ.target,
                        help="integer deployment target: 'onnxruntime' quantizes every tensor an integer kernel reads "
                             "(uint8) and simulates onnxruntime's kernels, so `learnq export --onnx` runs in "
                             "QLinearConv/QLinearAdd/QGemm... (W8A8, every layer; default: none, fake quantization "
                             "at layer inputs)")
    parser.add_argument("--fast", action="store_true",
                        help="the method's fast preset (option fast=true; adaround: 1,000 iterations per layer "
                             "instead of the paper's 10,000)")
    parser.add_argument("--codec", choices=CODECS, default="packed",
                        help="how the file stores the codes: packed (bit-packed, default) or ans (entropy-coded with "
                             "pcodec or constriction's rANS, pip install 'learnq[entropy]'; docs/entropy.md)")
    parser.add_argument("--out", default=None, help="the quantized model file to write")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_common(parser)
    parser.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["p=3", "distribution=gaussian"]`` -> ``{"p": 3, "distribution": "gaussian"}`` (values parsed as JSON when
    they are JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} must look like KEY=VALUE, e.g. p=3.0")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out


def default_out(path: Path, method: str, wbits: int, abits: int) -> Path:
    return path.with_name(f"{path.stem}.{method}-w{wbits}a{abits}.safetensors")


def run(args: argparse.Namespace) -> int:
    if args.method not in available_methods():
        raise ConfigError(f"--method {args.method!r} is unknown; available: {', '.join(available_methods())}")
    if isinstance(args.calib, bool) or args.calib < 1:
        raise ConfigError(f"--calib must be at least 1 sample, got {args.calib}")
    options = parse_options(args.option)
    if args.fast:
        if "fast" not in get_ptq_method(args.method).options:
            presets = [name for name, m in PTQ_METHODS.items() if "fast" in m.options]
            raise ConfigError(f"--fast: PTQ method {args.method!r} has no fast preset (methods with one: "
                              f"{', '.join(presets)})")
        options["fast"] = True
    skip = None if args.skip_first_last is None else args.skip_first_last == "yes"
    set_seed(args.seed)
    src = resolve_model_file(args.path)
    model, _, meta = rebuild(src, device="cpu")
    data = copy.deepcopy(meta["data"])
    data["calib_size"] = args.calib
    if isinstance(data.get("sizes"), dict) and "train" in data["sizes"]:
        data["sizes"]["calib"] = min(args.calib, int(data["sizes"]["train"]))
    splits = dataset_from_preprocessing(data)
    config = PTQ(method=args.method, wbits=args.wbits, abits=args.abits, granularity=args.granularity,
                 skip_first_last=skip, bias_correction=args.bias_correction, equalize=args.equalize,
                 options=options, target=args.target)
    result = quantize(model, splits.calib, config, device=args.device, seed=args.seed, progress=show_progress(args))
    before = evaluate(result.model, splits.test, device=args.device, batch_size=EVAL_BATCH)
    out = Path(args.out).expanduser() if args.out else default_out(src, args.method, result.wbits, result.abits)
    if args.target and not args.out:
        out = out.with_name(out.name.replace(".safetensors", f".{args.target}.safetensors"))
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input file; give another path")
    ptq = {"method": result.method, "wbits": result.wbits, "abits": result.abits, "calib": len(splits.calib),
           "granularity": args.granularity, "bias_correction": args.bias_correction, "equalize": args.equalize,
           "options": options,
           "seed": args.seed, "source": str(src), "target": args.target, "calib_seconds": result.calib_seconds,
           "loss_evals": result.loss_evals, "skipped": result.skipped}
    metadata = {k: v for k, v in meta.items() if k not in ("variant", "metrics", "ptq")}
    metadata.update({"variant": {"method": result.method, "bits": result.wbits, "abits": result.abits},
                     "ptq": ptq, "metrics": {"test": before}})
    size = save(result.model, out, metadata=metadata, report=True, codec=args.codec)
    reloaded = model_from_spec(meta["model"], device="cpu")
    load(out, reloaded, device=args.device)
    after = evaluate(reloaded, splits.test, device=args.device, batch_size=EVAL_BATCH)
    report = {"file": str(out), "source": str(src), "method": result.method, "wbits": result.wbits,
              "abits": result.abits, "target": args.target, "calib": len(splits.calib),
              "accuracy": after["accuracy"], "loss": after["loss"],
              "n": after["n"], "accuracy_before_save": before["accuracy"],
              "float_accuracy": (meta.get("metrics") or {}).get("test", {}).get("accuracy"),
              "file_bytes": int(size.file_bytes), "float32_bytes": int(size.float32_bytes), "codec": args.codec,
              "packed_bytes": size.packed_bytes, "bound_bytes": size.bound_bytes, "stored_bytes": size.stored_bytes,
              "calib_seconds": result.calib_seconds, "loss_evals": result.loss_evals, "skipped": result.skipped,
              "layers": result.layers}
    if args.json:
        print_json(report)
        return 0
    print(f"{src} -> {out}: {result.method} W{result.wbits}A{result.abits}, {len(splits.calib)} calibration samples, "
          f"{result.calib_seconds:.2f} s, {result.loss_evals} loss evaluations{_rate(result)}")
    if report["float_accuracy"] is not None:
        print(f"float test accuracy {100 * report['float_accuracy']:.2f}%")
    print(f"quantized test accuracy {100 * after['accuracy']:.2f}% (n = {after['n']}), loss {after['loss']:.4f}; "
          f"file {size.file_bytes} bytes ({size.float32_bytes / size.file_bytes:.2f}x smaller than float32)")
    for line in result.skipped:
        print(f"left in float: {line}")
    return 0


def _rate(result: Any) -> str:
    """`` (N/s)``: loss evaluations per second of calibration (LAPQ), or nothing."""
    if not result.loss_evals or not result.calib_seconds:
        return ""
    return f" ({result.loss_evals / result.calib_seconds:.1f}/s)"
