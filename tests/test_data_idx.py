"""learnq.pipeline.data.idx: MNIST / Fashion-MNIST from IDX files written here in the real format."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from learnq.errors import DataError
from learnq.pipeline.data import dataset_from_preprocessing, load_dataset
from learnq.pipeline.data.idx import read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <rank>, big-endian uint32 dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


def test_idx_header_magic_numbers():
    images = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    labels = idx_bytes(np.zeros(2, dtype=np.uint8))
    assert struct.unpack(">I", images[:4])[0] == 2051 and struct.unpack(">I", labels[:4])[0] == 2049


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_from_idx_files(tmp_path, gz, name):
    arrays = write_mnist(tmp_path, gz=gz)
    s = load_dataset(name, str(tmp_path), calib_size=8)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.name == name
    assert [len(s.train), len(s.calib), len(s.test)] == [30, 8, 10]
    assert s.train.tensors[1].tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert s.test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    norm = s.preprocessing["normalisation"]
    pixels = s.test.tensors[0].double() * norm["std"][0] + norm["mean"][0]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).double()[:, None] / 255
    assert torch.allclose(pixels, expected, atol=1e-6)
    train_pixels = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    assert norm["mean"][0] == pytest.approx(train_pixels.mean(), rel=1e-6)
    assert s.preprocessing["root"] == str(tmp_path.resolve()) and s.preprocessing["split"] == "files"


def test_limit_and_round_trip(tmp_path):
    write_mnist(tmp_path, n_train=40)
    s = load_dataset("mnist", str(tmp_path), limit=20, seed=1, calib_size=5)
    assert len(s.train) == 20 and np.bincount(s.train.tensors[1].numpy()).tolist() == [2] * 10
    rebuilt = dataset_from_preprocessing(json.loads(json.dumps(s.preprocessing)))
    for part in ("train", "calib", "test"):
        for a, b in zip(getattr(s, part).tensors, getattr(rebuilt, part).tensors, strict=True):
            assert torch.equal(a, b)


def test_changed_files_are_detected_on_rebuild(tmp_path):
    write_mnist(tmp_path)
    record = json.loads(json.dumps(load_dataset("mnist", str(tmp_path)).preprocessing))
    write_mnist(tmp_path, seed=1)  # other pixels, same sizes
    with pytest.raises(DataError, match="no longer match.*mean"):
        dataset_from_preprocessing(record)


def test_missing_file_names_both_full_paths(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    expected = tmp_path.resolve() / "t10k-labels-idx1-ubyte"
    with pytest.raises(DataError, match="IDX file not found") as info:
        load_dataset("mnist", str(tmp_path))
    assert f"{expected} or {expected}.gz" in str(info.value)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        load_dataset("mnist", str(tmp_path / "nope"))


def test_wrong_magic_truncated_and_bad_gzip(tmp_path):
    arrays = write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]))  # a label file where images belong
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_dataset("mnist", str(tmp_path))
    path.write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"])[:-5])
    with pytest.raises(DataError, match=r"truncated or has extra bytes: its header says shape \[30, 28, 28\]"):
        load_dataset("mnist", str(tmp_path))
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot read IDX file .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", str(tmp_path))


def test_count_mismatch_and_bad_labels(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, dtype=np.uint8)))
    with pytest.raises(DataError, match="holds 30 images but .* holds 29 labels"):
        load_dataset("mnist", str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 11, dtype=np.uint8)))
    with pytest.raises(DataError, match="label 11"):
        load_dataset("mnist", str(tmp_path))
