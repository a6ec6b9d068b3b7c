"""MNIST and Fashion-MNIST from a local directory of IDX files (gzipped or not).

No paper; the IDX format is described at http://yann.lecun.com/exdb/mnist/ : a 4-byte big-endian magic number
``0x00 0x00 <type> <rank>`` (type 0x08 = unsigned byte), ``rank`` big-endian uint32 dimensions, then the values in
row-major order. Image files have magic 2051 (ubyte, rank 3), label files magic 2049 (ubyte, rank 1). Both data sets
use the same four file names; each may be stored as ``NAME`` or ``NAME.gz``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from learnq.errors import DataError
from learnq.pipeline.data.splits import LoadRequest, RawData, limit_indices

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type code -> numpy dtype (big-endian for multi-byte types)
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def find_idx_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``, whichever exists; ``DataError`` naming both full paths otherwise."""
    plain, packed = root / name, root / f"{name}.gz"
    for path in (plain, packed):
        if path.is_file():
            return path
    raise DataError(f"IDX file not found: expected {plain} or {packed}")


def read_idx(path: Path) -> tuple[int, np.ndarray]:
    """The magic number and the array stored in one IDX file (``.gz`` files are decompressed)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file: its first bytes {data[:4].hex()} are not a valid magic number "
                        f"(expected 00000803 for images or 00000801 for labels)")
    magic = struct.unpack(">I", data[:4])[0]
    dtype, rank = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: its header needs {header} bytes, the file has {len(data)}")
    dims = struct.unpack(f">{rank}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"IDX file {path} is truncated or has extra bytes: its header says shape {list(dims)} "
                        f"({expected} bytes of data), the file holds {len(data) - header}")
    return magic, np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx_pair(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 of ``part`` ("train" or "test"), checked against each other."""
    image_path, label_path = (find_idx_file(root, name) for name in FILES[part])
    magic, images = read_idx(image_path)
    if magic != IMAGES_MAGIC:
        raise DataError(f"{image_path} has magic number {magic}, expected {IMAGES_MAGIC} (unsigned-byte images)")
    magic, labels = read_idx(label_path)
    if magic != LABELS_MAGIC:
        raise DataError(f"{label_path} has magic number {magic}, expected {LABELS_MAGIC} (unsigned-byte labels)")
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{image_path} holds no images")
    if labels.max() >= 10:
        raise DataError(f"{label_path} has label {int(labels.max())}; MNIST-style labels must be 0..9")
    return images, labels


def load_idx_raw(request: LoadRequest) -> RawData:
    """MNIST or Fashion-MNIST from ``request.root``: (N, 1, H, W) float32 in [0, 1], labels 0..9."""
    assert request.root is not None  # checked by load_dataset
    root = request.root
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; it should hold {FILES['train'][0]}[.gz] and the "
                        "three other IDX files")
    train_images, train_labels = read_idx_pair(root, "train")
    test_images, test_labels = read_idx_pair(root, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"training images in {root} are {train_images.shape[1:]} but test images are "
                        f"{test_images.shape[1:]}; both must have the same size")
    train_y = train_labels.astype(np.int64)
    keep = limit_indices(train_y, request.limit, request.seed)
    if keep is not None:
        train_images, train_y = train_images[keep], train_y[keep]

    def to_float(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32)[:, None] / np.float32(255.0)

    return RawData(to_float(train_images), train_y, to_float(test_images), test_labels.astype(np.int64),
                   num_classes=10, info={"divide_by": 255.0}, limited=True)
