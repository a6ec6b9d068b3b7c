"""The pipeline of ``learnq train`` / ``run`` / ``eval`` / ``demo``: train, quantize, evaluate, save, report.

No paper. A run directory holds:

* ``recipe.json``: the recipe as resolved (every default and seed written out);
* ``model.safetensors``: the trained float model (``learnq.save``), its metadata recording ``model`` (the model
  spec), ``data`` (the data set's preprocessing record), ``recipe`` and ``metrics``, so ``learnq eval FILE`` rebuilds
  the network and its test data with no user code;
* ``checkpoints/last.pt``: the trainer's state after every epoch (``--resume``);
* per quantized variant, ``<name>.safetensors`` (``<method>-w<bits>`` unless the recipe names it), with the same
  metadata plus ``variant``; the float baseline's file is ``model.safetensors`` itself;
* ``metrics.json``: the float model's test metrics, the training history, what the training-time methods ended
  with (``training``: each regularizer's per-layer loss, DSMM's temperatures, SatNL's saturation levels, the
  ``[qat]`` quantizer's true size and bits) and (``run``) one row per variant ``{method, bits, accuracy, file,
  file_bytes, ratio, abits}``, where accuracy is that of the model *reloaded from its file* on the test split and
  ratio is the model's float32 bytes over the file's bytes (methods that learn their widths report the stored code
  bits per quantized value as ``bits``); ``bits`` are the weights' bits and ``abits`` the activations' (32: float);
* ``report.md``, ``training.png``, ``accuracy_vs_size.png`` (``run``; see learnq.pipeline.report);
* ``.learnq.lock`` while a run writes the directory (:mod:`learnq.pipeline.run_lock`): a second writer is refused.

Training-time sections of the recipe (:mod:`learnq.pipeline.training`): ``[satnl]`` reparametrises the conv/linear
weights before anything else is attached, ``[[regularizers]]`` add loss terms (their own parameters, e.g. DSMM's
temperatures, in groups without weight decay), ``[qat]`` attaches quantizers, ``[asam]`` wraps the optimizer. After
training, SatNL is baked into the weights (``SatNL.remove``), so ``model.safetensors`` holds ``a·tanh(w/a)``; the
``[qat]`` quantizers are frozen (``QuantHandle.freeze``), so ``model.safetensors`` is the quantized model and the run's
one row (``method`` = the QAT method).

Reading a run's files back (``learnq eval``) is :mod:`learnq.pipeline.model_files`. Under torchrun every process
trains (data parallel); only rank 0 writes files, quantizes and reports.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from learnq.atomic_file import write_atomic
from learnq.checkpoint import load, read, save
from learnq.errors import ConfigError
from learnq.evaluation import task_metrics
from learnq.grid import FLOAT_BITS
from learnq.pipeline import schema
from learnq.pipeline.data import Splits, load_dataset
from learnq.pipeline.model_files import EVAL_BATCH, MODEL_FILE
from learnq.pipeline.models import model_from_spec, model_spec
from learnq.pipeline.qat_variants import freeze_with_summary, mean_bits
from learnq.pipeline.registry import apply_variant, get_variant, validate_recipe
from learnq.pipeline.run_lock import claim_run_dir
from learnq.pipeline.sections import Recipe, VariantSection
from learnq.pipeline.train import evaluate, is_main_process, set_seed, train
from learnq.pipeline.training import prepare_training, training_summary

METRICS_VERSION = 1
ROW_KEYS = ("method", "bits", "accuracy", "file", "file_bytes", "ratio", "abits")


@dataclass
class TrainedRun:
    """What ``train_recipe`` leaves: the trained model and everything needed to quantize and report it."""

    recipe: Recipe
    out: Path
    model: nn.Module
    splits: Splits
    spec: dict
    history: list[dict]
    test: dict  # {"loss", "accuracy", "n"} of the float model on the test split (+ task_metrics for an LM)
    is_main: bool = True
    regularizers: dict[str, nn.Module] = field(default_factory=dict)  # the recipe's regularizers, trained
    training: dict = field(default_factory=dict)  # training_summary(): what metrics.json records as "training"
    resumed_from_epoch: int | None = None  # --resume: the epochs the checkpoint had done


@dataclass
class RunResult:
    """What ``run_recipe`` leaves: the rows of the report (``ROW_KEYS``) and the paths written."""

    out: Path
    rows: list[dict]
    test: dict
    history: list[dict]
    details: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    is_main: bool = True
    resumed_from_epoch: int | None = None  # --resume: the epochs the checkpoint had done


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


def prepare_out(out: str | os.PathLike) -> Path:
    """Create the run directory (``ConfigError`` if it is a file or cannot be created)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a directory for the run")
    if is_main_process():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {path}: {exc}") from exc
    return path


def load_splits(recipe: Recipe, *, progress: bool = False) -> Splits:
    """The recipe's data set, split and normalised."""
    d = recipe.data
    options = dict(d.options)
    if progress:
        options["progress"] = True
    return load_dataset(d.name, d.root, seed=d.seed if d.seed is not None else recipe.seed, calib_size=d.calib_size,
                        test_fraction=d.test_fraction, limit=d.limit, **options)


def _metadata(trained: TrainedRun, metrics: dict, variant: VariantSection | None = None) -> dict:
    recipe = trained.recipe.to_dict()
    recipe.pop("variants")  # the run's list lives in recipe.json; a file records its own ``variant``
    meta = {"model": trained.spec, "data": trained.splits.preprocessing, "recipe": recipe, "metrics": metrics}
    if variant is not None:
        meta["variant"] = schema.to_dict(variant)
    return meta


def _device(recipe: Recipe) -> str:
    return str(recipe.train.device)


def train_recipe(recipe: Recipe, out: str | os.PathLike, *, resume: bool = False,
                 progress: bool = False) -> TrainedRun:
    """Load the data, build and train the model, write ``recipe.json``, ``model.safetensors`` and ``metrics.json``.

    The run directory is claimed first (:func:`learnq.pipeline.run_lock.claim_run_dir`): ``BusyError`` naming the
    holder if another learnq process is writing it. The recipe is validated first (``ConfigError`` naming the key)."""
    validate_recipe(recipe)
    out_dir = prepare_out(out)
    with claim_run_dir(out_dir):
        return _train_recipe(recipe, out_dir, resume=resume, progress=progress)


def _train_recipe(recipe: Recipe, out_dir: Path, *, resume: bool, progress: bool) -> TrainedRun:
    device = _device(recipe)
    splits = load_splits(recipe, progress=progress)
    spec = model_spec(recipe.model.name, splits.input_shape, splits.num_classes, **recipe.model.args)
    set_seed(recipe.train.seed)  # the same initial weights on every process
    model = model_from_spec(spec, device="cpu")
    parts = prepare_training(recipe, model, device)
    result = train(model, splits.train, recipe.train, test_set=splits.test, checkpoint_dir=str(out_dir / "checkpoints"),
                   resume=resume, progress=progress, **parts.kwargs)
    model = result.model
    summary = training_summary(recipe, model, parts.regularizers, parts.traces)
    if parts.qat_handle is not None:  # first: freezing also bakes in the parametrizations before the quantizers
        summary["qat"] = freeze_with_summary(parts.qat_handle)
    if recipe.satnl is not None:
        from learnq.regularizers import SatNL

        if SatNL.is_applied(model):  # bake a·tanh(w/a) into the weights: the saved float model is the one trained
            SatNL.remove(model)
    main = is_main_process()
    test = evaluate(model, splits.test, device=next(model.parameters()).device, batch_size=EVAL_BATCH)
    test = task_metrics(test, splits.task)  # + bits per character and perplexity for a language model
    trained = TrainedRun(recipe=recipe, out=out_dir, model=model, splits=splits, spec=spec, history=result.history,
                         test=test, is_main=main, regularizers=parts.regularizers, training=summary,
                         resumed_from_epoch=result.resumed_from_epoch)
    if main:
        _write_json(out_dir / "recipe.json", recipe.to_dict())
        file_metrics: dict[str, Any] = {"test": test, "epochs": len(result.history)}
        if "qat" in summary and summary["qat"]["bits"] is not None:
            file_metrics["bits"] = round(summary["qat"]["bits"], 2)  # as the run's row reports it
        save(model, out_dir / MODEL_FILE, metadata=_metadata(trained, file_metrics))
        write_metrics(trained)
    return trained


def write_metrics(trained: TrainedRun, rows: list[dict] | None = None, details: list[dict] | None = None) -> Path:
    """Write ``metrics.json``: version, recipe name, seed, the float test metrics, history and (run) the rows."""
    payload: dict[str, Any] = {"version": METRICS_VERSION, "recipe": trained.recipe.name, "seed": trained.recipe.seed,
                               "test": trained.test, "history": trained.history, "training": trained.training}
    if rows is not None:
        payload["rows"] = rows
        payload["variants"] = details or []
    path = trained.out / "metrics.json"
    _write_json(path, payload)
    return path


def run_variant(trained: TrainedRun, variant: VariantSection) -> tuple[dict, dict]:
    """Quantize a copy of the trained model as ``variant`` says, save it, reload it, evaluate the reloaded model.

    Returns the report row (``ROW_KEYS``) and a detail record (label, in-memory metrics, reloaded loss, sizes).
    """
    info = get_variant(variant.method)
    device = _device(trained.recipe)
    bits: float = variant.weight_bits
    if info.quantizes:
        set_seed(trained.recipe.seed)
        model = apply_variant(copy.deepcopy(trained.model), trained.splits, variant, trained.recipe.seed, device)
        before = evaluate(model, trained.splits.test, device=device, batch_size=EVAL_BATCH)
        name = f"{variant.label}.safetensors"
        file_metrics: dict[str, Any] = {"test": before}
        if info.learned_bits:
            bits = file_metrics["bits"] = _learned_bits(model, variant.label)
        size = save(model, trained.out / name, metadata=_metadata(trained, file_metrics, variant), report=True,
                    codec=variant.codec)
    else:
        before = trained.test
        name = MODEL_FILE
        size = read(trained.out / name).size
    abits = FLOAT_BITS if variant.abits is None else variant.abits
    return _file_row(trained, variant.method, bits, variant.label, name, before, size, abits)


def _learned_bits(model: nn.Module, label: str) -> float:
    value = mean_bits(model)
    if value is None:
        raise ConfigError(f"variant {label}: the method quantized no parameter; check its select / bits_overrides")
    return round(value, 2)


def run_qat_model(trained: TrainedRun) -> tuple[dict, dict]:
    """The row of a ``[qat]`` run: its trained (frozen, quantized) ``model.safetensors`` reloaded and evaluated;
    ``method`` is the QAT method and ``bits`` the stored code bits per quantized value."""
    qat = trained.training["qat"]
    size = read(trained.out / MODEL_FILE).size
    bits = round(qat["bits"], 2) if qat["bits"] is not None else 32
    abits = qat.get("abits") or FLOAT_BITS
    return _file_row(trained, qat["method"], bits, qat["method"], MODEL_FILE, trained.test, size, abits)


def _file_row(trained: TrainedRun, method: str, bits: float, label: str, name: str, before: dict,
              size: Any, abits: int = 32) -> tuple[dict, dict]:
    """Reload file ``name`` into a fresh network, evaluate it, and build the row and detail records."""
    device = _device(trained.recipe)
    reloaded = model_from_spec(trained.spec, device="cpu")
    load(trained.out / name, reloaded, device=device)
    after = evaluate(reloaded, trained.splits.test, device=device, batch_size=EVAL_BATCH)
    file_bytes = int(size.file_bytes)
    row = {"method": method, "bits": bits, "accuracy": after["accuracy"], "file": name,
           "file_bytes": file_bytes, "ratio": size.float32_bytes / file_bytes, "abits": abits}
    detail = {"name": label, "method": method, "bits": bits, "abits": abits, "file": name,
              "test_loss": after["loss"], "accuracy": after["accuracy"], "n": after["n"],
              "accuracy_before_save": before["accuracy"], "naive_bytes": size.naive_bytes,
              "stored_bytes": size.stored_bytes, "zlib_bytes": size.zlib_bytes, "float32_bytes": size.float32_bytes,
              "file_bytes": file_bytes}
    return row, detail


def run_recipe(recipe: Recipe, out: str | os.PathLike, *, resume: bool = False, progress: bool = False,
               report: bool = True) -> RunResult:
    """``learnq run``: train, then every variant (quantize, save, reload, evaluate), metrics.json and the report.

    The run directory is claimed for the whole run (``BusyError`` naming the holder if another process writes it)."""
    validate_recipe(recipe)
    out_dir = prepare_out(out)
    with claim_run_dir(out_dir):
        return _run_recipe(recipe, out_dir, resume=resume, progress=progress, report=report)


def _run_recipe(recipe: Recipe, out: Path, *, resume: bool, progress: bool, report: bool) -> RunResult:
    trained = train_recipe(recipe, out, resume=resume, progress=progress)
    if not trained.is_main:
        return RunResult(out=trained.out, rows=[], test=trained.test, history=trained.history, is_main=False)
    rows: list[dict] = []
    details: list[dict] = []
    if "qat" in trained.training:
        row, detail = run_qat_model(trained)
        rows.append(row)
        details.append(detail)
    show = progress and sys.stderr.isatty()
    for variant in tqdm(recipe.variants, desc="variants", unit="variant", disable=not show):
        row, detail = run_variant(trained, variant)
        rows.append(row)
        details.append(detail)
    files = [trained.out / "recipe.json", trained.out / MODEL_FILE, write_metrics(trained, rows, details)]
    files += [trained.out / r["file"] for r in rows if r["file"] != MODEL_FILE]
    if report:
        from learnq.pipeline.report import write_report

        files += write_report(trained.out, recipe=recipe, history=trained.history, rows=rows, test=trained.test,
                              plots=recipe.report.plots)
        if recipe.report.plots:
            files += write_alpha_plots(trained)
    return RunResult(out=trained.out, rows=rows, test=trained.test, history=trained.history, details=details,
                     files=files, resumed_from_epoch=trained.resumed_from_epoch)


def write_alpha_plots(trained: TrainedRun) -> list[Path]:
    """``dsmm_alpha.png`` (``dsmm_alpha_<key>.png`` for a second DSMM) per DSMM trace of the run: α and α* per
    layer against the epoch (:func:`learnq.regularizers.dsmm_alpha.plot_alpha_trace`)."""
    from learnq.regularizers.dsmm_alpha import plot_alpha_trace

    traced = {k: r["trace"] for k, r in trained.training.get("regularizers", {}).items() if r.get("trace")}
    return [plot_alpha_trace(trace, trained.out / ("dsmm_alpha.png" if key == "dsmm" else f"dsmm_alpha_{key}.png"))
            for key, trace in traced.items()]


__all__ = ["TrainedRun", "RunResult", "ROW_KEYS", "MODEL_FILE", "prepare_out", "load_splits",
           "train_recipe", "write_metrics", "run_variant", "run_qat_model", "run_recipe", "write_alpha_plots"]
