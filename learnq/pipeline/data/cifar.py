"""CIFAR-10 from a local directory of the "python version" batches.

No paper; format of https://www.cs.toronto.edu/~kriz/cifar.html : files ``data_batch_1`` .. ``data_batch_5`` and
``test_batch`` (in ``root`` or ``root/cifar-10-batches-py``), each a pickled dict with ``b"data"`` (uint8 array of
shape (n, 3072): 1024 red, 1024 green, then 1024 blue values of a 32x32 image in row-major order) and ``b"labels"``
(n ints in 0..9).

These batches are the only pickles learnq ever reads, and only from a directory the user named. Even so they are
read with an unpickler that resolves nothing but the numpy array constructors such files need, so a file that
tries to call anything else is refused with a ``DataError`` instead of being executed.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from learnq.errors import DataError
from learnq.pipeline.data.splits import LoadRequest, RawData, limit_indices

SUBDIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
ROW_BYTES = 3 * 32 * 32

# the only globals a CIFAR batch (pickled by Python 2 or 3, any protocol) refers to
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays")
        if module.startswith("numpy.core."):  # the numpy 1 name of numpy 2's numpy._core (avoids a warning)
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core."):]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def batch_directory(root: Path) -> Path:
    """``root`` if it holds the batches, else ``root/cifar-10-batches-py``; ``DataError`` naming both otherwise."""
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; it should hold {TRAIN_FILES[0]} .. {TEST_FILE} "
                        f"(or a {SUBDIR}/ folder with them)")
    for directory in (root, root / SUBDIR):
        if (directory / TRAIN_FILES[0]).is_file():
            return directory
    raise DataError(f"CIFAR-10 batch not found: expected {root / TRAIN_FILES[0]} or {root / SUBDIR / TRAIN_FILES[0]}")


def _get(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR-10 batch {path} has no {key!r} entry (keys: {sorted(map(str, batch))[:6]})")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of one pickled batch file."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch not found: expected {path}")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {path} holds a {type(batch).__name__}, expected a dict")
    data, labels = _get(batch, "data", path), _get(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        shape = getattr(data, "shape", None)
        raise DataError(f"CIFAR-10 batch {path}: 'data' must be a uint8 array of shape (n, {ROW_BYTES}), got "
                        f"{type(data).__name__} of shape {shape} and dtype {getattr(data, 'dtype', None)}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"CIFAR-10 batch {path}: 'labels' must be a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 batch {path} has {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {path} has labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_raw(request: LoadRequest) -> RawData:
    """CIFAR-10 from ``request.root``: (N, 3, 32, 32) float32 in [0, 1], labels 0..9."""
    assert request.root is not None  # checked by load_dataset
    directory = batch_directory(request.root)
    parts = [read_batch(directory / name) for name in TRAIN_FILES]
    test_images, test_labels = read_batch(directory / TEST_FILE)
    train_images = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    if len(train_y) == 0 or len(test_labels) == 0:
        raise DataError(f"CIFAR-10 batches in {directory} hold {len(train_y)} training and {len(test_labels)} test "
                        "images; both must be non-empty")
    keep = limit_indices(train_y, request.limit, request.seed)
    if keep is not None:
        train_images, train_y = train_images[keep], train_y[keep]
    train_x = train_images.astype(np.float32) / np.float32(255.0)
    test_x = test_images.astype(np.float32) / np.float32(255.0)
    return RawData(train_x, train_y, test_x, test_labels, num_classes=10,
                   info={"divide_by": 255.0, "batch_directory": str(directory)}, limited=True)
