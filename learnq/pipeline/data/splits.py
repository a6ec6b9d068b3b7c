"""Seeded train / calibration / test splits, per-channel normalisation and seeded loaders.

No paper: the plumbing every data set shares. Order of operations (``assemble``):

1. test split: the data set's own test files, or for built-in sets a stratified seeded draw of ``test_fraction``;
2. ``limit``: a stratified seeded subset of the training data (the test split does not depend on it);
3. normalisation: per-channel mean and standard deviation computed on that training split only, applied to all;
4. calibration: a stratified seeded subset of ``min(calib_size, n_train)`` *training* samples, never test samples.

Each step draws from its own random stream (``rng_for(seed, stream)``), so changing one parameter leaves the other
draws unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data._validate import check_int, check_seed

# one random stream per purpose
STREAM_TEST = 1
STREAM_LIMIT = 2
STREAM_CALIB = 3
STREAM_DATA = 4  # generation of synthetic data

_STATS_CHUNK = 1 << 20  # elements per chunk when computing statistics (bounds float64 temporaries)


@dataclass
class Splits:
    """A data set cut into train, calibration (a subset of train) and test parts.

    Inputs are float32 ``(N, *input_shape)`` (``(N, C, H, W)`` for images), normalised per channel with the
    training split's mean and std; labels are int64 in ``[0, num_classes)``. ``preprocessing`` is JSON-serialisable
    and rebuilds the same tensors with ``dataset_from_preprocessing``.
    """

    train: TensorDataset
    calib: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    preprocessing: dict
    task: str = "classification"  # or "language-model": (N, T) token targets, metrics in bits per character


@dataclass
class RawData:
    """What a loader returns: un-normalised float32 inputs (already scaled, e.g. to [0, 1]) and int64 labels.

    ``test_x``/``test_y`` are None for data sets without their own test files (split with ``test_fraction``).
    ``limited`` is True when the loader already applied ``limit`` (with ``limit_indices``) to avoid decoding unused
    files. ``options`` are the loader's options after validation; ``info`` holds extra JSON entries for the
    preprocessing record (scaling, resizing, class names...).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    limited: bool = False


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for: the directory (None for built-in sets), its options (unchecked), the seed and the
    training-set ``limit`` (a loader may apply it early, see ``RawData.limited``), whether to show progress, and
    ``test_fraction`` (the text sets hold out that share of their works)."""

    root: Path | None
    options: dict[str, Any]
    seed: int
    limit: int | None
    progress: bool = False
    test_fraction: float = 0.2


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """The random generator of one purpose (``STREAM_*``) for ``seed``; independent across streams."""
    return np.random.default_rng([stream, seed])


def stratified_choice(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` samples drawn without replacement, keeping each class's share of ``labels``.

    Class quotas are ``n * count_k / N`` rounded by largest remainder (ties to the smaller class id), so they sum to
    exactly ``n``; within each class the samples are a uniform random draw.
    """
    labels = np.asarray(labels)
    total = labels.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"cannot choose {n} of {total} samples")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = (n * counts) // total
    remainders = (n * counts) % total  # exact integer remainders, no float ties
    missing = n - int(quotas.sum())
    order = np.lexsort((classes, -remainders))  # largest remainder first, then smaller class id
    quotas[order[:missing]] += 1
    chosen = []
    for cls, quota in zip(classes, quotas, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:quota])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def limit_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray | None:
    """Indices of the training samples kept by ``limit`` (None when everything is kept)."""
    if limit is None or limit >= len(labels):
        return None
    return stratified_choice(labels, limit, rng_for(seed, STREAM_LIMIT))


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel (axis 1) mean and population std of ``x`` (N, C, ...), in float64, two passes over chunks.

    A channel with zero variance (constant) gets std 1.0 so that normalising never divides by zero; the value used
    is the one recorded in the preprocessing.
    """
    n, c = x.shape[0], x.shape[1]
    per = int(np.prod(x.shape[2:], dtype=np.int64))
    flat = x.reshape(n, c, per)
    chunk = max(1, _STATS_CHUNK // max(1, c * per))
    total = np.zeros(c, dtype=np.float64)
    for i in range(0, n, chunk):
        total += flat[i:i + chunk].sum(axis=(0, 2), dtype=np.float64)
    mean = total / (n * per)
    squares = np.zeros(c, dtype=np.float64)
    for i in range(0, n, chunk):
        d = flat[i:i + chunk].astype(np.float64) - mean[None, :, None]
        squares += (d * d).sum(axis=(0, 2))
    std = np.sqrt(squares / (n * per))
    std[std == 0] = 1.0
    return [float(v) for v in mean], [float(v) for v in std]


def normalise_(x: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel, in place on the float32 array ``x``."""
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    x -= np.asarray(mean, dtype=np.float32).reshape(shape)
    x /= np.asarray(std, dtype=np.float32).reshape(shape)
    return x


def _writable_float32(x: np.ndarray) -> np.ndarray:
    """``x`` itself when it is a writable float32 array (normalised in place, saving a copy of e.g. 600 MB for
    CIFAR-10), else a float32 copy (the read-only cached built-in arrays)."""
    if x.dtype == np.float32 and x.flags.writeable and x.flags.c_contiguous:
        return x
    return np.array(x, dtype=np.float32)


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                         torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def assemble(raw: RawData, *, name: str, seed: int, calib_size: int, test_fraction: float, limit: int | None,
             stats: tuple[list[float], list[float]] | None = None) -> tuple[Splits, dict[str, Any]]:
    """Split, limit, normalise and draw the calibration set (see the module docstring for the order).

    The arrays of ``raw`` may be normalised in place (writable float32 ones): do not reuse ``raw`` afterwards.

    ``stats`` (mean, std) replaces the statistics computed on the training split (used when rebuilding from a
    preprocessing record). Returns the ``Splits`` (its ``preprocessing`` holds the split entries only; the caller
    completes it) and the statistics computed on the training split.
    """
    train_x, train_y = raw.train_x, raw.train_y
    if raw.test_x is None:
        n = len(train_y)
        n_test = int(round(n * test_fraction))
        if n_test < 1 or n_test >= n:
            raise ConfigError(f"test_fraction={test_fraction} of {n} samples of {name} leaves {n_test} test and "
                              f"{n - n_test} training samples; choose a test_fraction that leaves both non-empty")
        test_idx = stratified_choice(train_y, n_test, rng_for(seed, STREAM_TEST))
        mask = np.ones(n, dtype=bool)
        mask[test_idx] = False
        test_x, test_y = train_x[test_idx], train_y[test_idx]
        train_x, train_y = train_x[mask], train_y[mask]
        split = "stratified"
    else:
        test_x, test_y = raw.test_x, raw.test_y
        split = "files"
    if not raw.limited:
        keep = limit_indices(train_y, limit, seed)
        if keep is not None:
            train_x, train_y = train_x[keep], train_y[keep]
    computed = channel_stats(train_x)
    mean, std = stats if stats is not None else computed
    if len(mean) != train_x.shape[1] or len(std) != train_x.shape[1]:
        raise DataError(f"{name} has {train_x.shape[1]} channels but the recorded normalisation has {len(mean)} "
                        f"means and {len(std)} stds")
    train_x = normalise_(_writable_float32(train_x), mean, std)
    test_x = normalise_(_writable_float32(test_x), mean, std)
    calib_idx = stratified_choice(train_y, min(calib_size, len(train_y)), rng_for(seed, STREAM_CALIB))
    input_shape = tuple(int(s) for s in train_x.shape[1:])
    record = {
        "split": split,
        "normalisation": {"mean": list(mean), "std": list(std), "axis": 1, "computed_on": "train"},
        "input_shape": list(input_shape),
        "num_classes": raw.num_classes,
        "sizes": {"train": int(len(train_y)), "calib": int(len(calib_idx)), "test": int(len(test_y))},
    }
    splits = Splits(train=_dataset(train_x, train_y), calib=_dataset(train_x[calib_idx], train_y[calib_idx]),
                    test=_dataset(test_x, test_y), input_shape=input_shape, num_classes=raw.num_classes, name=name,
                    preprocessing=record)
    return splits, {"mean": computed[0], "std": computed[1]}


def make_loader(ds: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A single-process ``DataLoader`` whose shuffling is seeded: same seed, same batches, epoch after epoch.

    Each pass over the loader advances its own generator, so successive epochs see different (but reproducible)
    orders.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_seed(seed)
    if drop_last and batch_size > len(ds):
        raise ConfigError(f"batch_size={batch_size} is larger than the data set ({len(ds)} samples) with "
                          "drop_last=True, which gives no batch at all; use a smaller batch_size")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=bool(shuffle), generator=generator,
                      drop_last=bool(drop_last), num_workers=0)
