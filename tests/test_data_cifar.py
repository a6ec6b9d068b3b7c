"""learnq.pipeline.data.cifar: CIFAR-10 python batches written here in the real format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from learnq.errors import DataError
from learnq.pipeline.data import load_dataset
from learnq.pipeline.data.cifar import read_batch

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(directory: Path, rows: int = 4, protocol: int = 2, str_keys: bool = False) -> dict:
    """Six batches of ``rows`` images each: dicts with b"data" (rows, 3072) uint8 and b"labels" (list of int)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for k, name in enumerate(NAMES):
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = [(k + i) % 10 for i in range(rows)]
        key = (lambda s: s) if str_keys else (lambda s: s.encode())
        batch = {key("batch_label"): b"batch", key("labels"): labels, key("data"): data,
                 key("filenames"): [b"x.png"] * rows}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_in_root(tmp_path, protocol):
    batches = write_cifar(tmp_path, protocol=protocol)
    s = load_dataset("cifar10", str(tmp_path), calib_size=6)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert [len(s.train), len(s.calib), len(s.test)] == [20, 6, 4]
    assert s.train.tensors[1].tolist() == sum((batches[n][1] for n in NAMES[:5]), [])
    assert s.test.tensors[1].tolist() == batches["test_batch"][1]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    data = batches["test_batch"][0]
    norm = s.preprocessing["normalisation"]
    x = s.test.tensors[0].numpy().astype(np.float64)
    for c in range(3):
        pixels = x[:, c] * norm["std"][c] + norm["mean"][c]
        np.testing.assert_allclose(pixels, data[:, 1024 * c:1024 * (c + 1)].reshape(-1, 32, 32) / 255, atol=1e-6)
    assert len(norm["mean"]) == 3


def test_cifar_batches_in_subfolder_and_str_keys(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", str_keys=True)
    s = load_dataset("cifar10", str(tmp_path), limit=10)
    assert len(s.train) == 10 and len(s.test) == 4
    assert s.preprocessing["batch_directory"] == str(tmp_path.resolve() / "cifar-10-batches-py")


def test_missing_first_batch_names_both_places(tmp_path):
    tmp_path.joinpath("other").write_text("x")
    root = tmp_path.resolve()
    with pytest.raises(DataError, match="CIFAR-10 batch not found") as info:
        load_dataset("cifar10", str(tmp_path))
    assert f"{root / 'data_batch_1'} or {root / 'cifar-10-batches-py' / 'data_batch_1'}" in str(info.value)


def test_missing_later_batch_names_it(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match=f"expected {tmp_path.resolve() / 'data_batch_4'}$"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        ({b"labels": [1]}, "has no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "has no 'labels' entry"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}, r"shape \(n, 3072\), got ndarray of shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "dtype float32"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "has 2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "labels outside 0..9"),
        ([1, 2], "holds a list, expected a dict"),
    ],
)
def test_malformed_batch(tmp_path, batch, pattern):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=pattern):
        read_batch(path)


def test_python2_style_numpy_core_names_load_without_warning(tmp_path, recwarn):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    raw = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path = tmp_path / "test_batch"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))  # as in the real files
    images, labels = read_batch(path)
    assert np.array_equal(images.reshape(2, 3072), data) and labels.tolist() == [3, 4]
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_truncated_batch(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:100])
    with pytest.raises(DataError, match=f"cannot read CIFAR-10 batch {path}"):
        read_batch(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_calls_code_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load .*system"):
        read_batch(path)
