"""learnq.pipeline.data.splits and _validate: stratified draws, statistics, assembly order, seeded loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data._validate import check_float, check_int, check_shape
from learnq.pipeline.data.splits import (
    RawData,
    assemble,
    channel_stats,
    limit_indices,
    make_loader,
    normalise_,
    rng_for,
    stratified_choice,
)


def test_stratified_choice_quotas_by_largest_remainder():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    # n = 4: exact shares 2.0, 1.2, 0.8 -> floors 2, 1, 0, one left for the largest remainder (class 2: 0.8)
    idx = stratified_choice(labels, 4, rng_for(0, 1))
    assert np.bincount(labels[idx], minlength=3).tolist() == [2, 1, 1]
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert stratified_choice(labels, 0, rng_for(0, 1)).tolist() == []
    assert stratified_choice(labels, 10, rng_for(0, 1)).tolist() == list(range(10))


def test_stratified_choice_is_seeded_and_uniform_within_class():
    labels = np.zeros(10, dtype=np.int64)
    a = stratified_choice(labels, 3, rng_for(7, 1))
    assert a.tolist() == stratified_choice(labels, 3, rng_for(7, 1)).tolist()
    counts = np.zeros(10)
    for seed in range(400):
        counts[stratified_choice(labels, 3, rng_for(seed, 1))] += 1
    assert counts.sum() == 1200 and counts.min() > 80 and counts.max() < 160  # expected 120 each


def test_streams_are_independent():
    assert rng_for(0, 1).integers(1 << 30) != rng_for(0, 2).integers(1 << 30)


def test_limit_indices():
    labels = np.repeat(np.arange(4), 25)
    assert limit_indices(labels, None, 0) is None and limit_indices(labels, 100, 0) is None
    keep = limit_indices(labels, 20, 0)
    assert np.bincount(labels[keep]).tolist() == [5, 5, 5, 5]


def test_channel_stats_against_numpy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((37, 3, 5, 4)) * [[[[1.0]], [[2.0]], [[0.5]]]] + [[[[3.0]], [[-1.0]], [[0.0]]]])
    x = x.astype(np.float32)
    mean, std = channel_stats(x)
    ref = x.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    # (N, F) data: one statistic per feature
    feats = rng.standard_normal((50, 6)).astype(np.float32)
    np.testing.assert_allclose(channel_stats(feats)[1], feats.astype(np.float64).std(axis=0), rtol=1e-12)


def test_channel_stats_chunking_does_not_change_the_result(monkeypatch):
    x = np.random.default_rng(1).random((64, 2, 8, 8), dtype=np.float32)
    whole = channel_stats(x)
    monkeypatch.setattr("learnq.pipeline.data.splits._STATS_CHUNK", 128)  # one sample per chunk
    np.testing.assert_allclose(channel_stats(x), whole, rtol=1e-13)


def test_constant_channel_gets_std_one():
    x = np.ones((4, 2, 3, 3), dtype=np.float32)
    x[:, 1] = np.arange(4, dtype=np.float32)[:, None, None]
    mean, std = channel_stats(x)
    assert mean == [1.0, 1.5] and std[0] == 1.0 and std[1] == pytest.approx(np.sqrt(1.25))
    out = normalise_(x.copy(), mean, std)
    assert np.all(out[:, 0] == 0) and np.all(np.isfinite(out))


def test_normalise_in_place_per_channel():
    x = np.array([[[1.0], [10.0]], [[3.0], [30.0]]], dtype=np.float32)  # (N=2, C=2, 1)
    out = normalise_(x, [2.0, 20.0], [1.0, 10.0])
    assert out is x and x[:, 0, 0].tolist() == [-1.0, 1.0] and x[:, 1, 0].tolist() == [-1.0, 1.0]


def _raw(n_train: int = 30, n_test: int | None = None) -> RawData:
    rng = np.random.default_rng(0)
    x = rng.random((n_train, 1, 2, 2), dtype=np.float32)
    y = np.arange(n_train, dtype=np.int64) % 3
    if n_test is None:
        return RawData(x, y, None, None, num_classes=3)
    xt = rng.random((n_test, 1, 2, 2), dtype=np.float32)
    return RawData(x, y, xt, np.arange(n_test, dtype=np.int64) % 3, num_classes=3)


def test_assemble_with_own_test_files_and_limit():
    raw = _raw(30, 7)
    test_x = raw.test_x.copy()  # assemble may normalise raw's arrays in place
    s, computed = assemble(raw, name="t", seed=0, calib_size=4, test_fraction=0.5, limit=12)
    assert [len(s.train), len(s.calib), len(s.test)] == [12, 4, 7]  # test_fraction unused with test files
    assert s.preprocessing["split"] == "files" and s.preprocessing["sizes"] == {"train": 12, "calib": 4, "test": 7}
    kept = limit_indices(raw.train_y, 12, 0)
    mean, std = channel_stats(raw.train_x[kept])
    assert computed == {"mean": mean, "std": std}  # statistics of the limited training split
    expected = (test_x - np.float32(mean[0])) / np.float32(std[0])
    assert np.array_equal(s.test.tensors[0].numpy(), expected)


def test_assemble_with_given_stats_and_wrong_channel_count():
    raw = _raw(30)
    values = set(np.unique(raw.train_x).tolist())
    s, _ = assemble(raw, name="t", seed=0, calib_size=4, test_fraction=0.2, limit=None, stats=([0.0], [2.0]))
    assert s.preprocessing["normalisation"]["mean"] == [0.0]
    assert set(np.unique(s.train.tensors[0].numpy() * 2).tolist()) <= values
    with pytest.raises(DataError, match="1 channels but the recorded normalisation has 2 means"):
        assemble(raw, name="t", seed=0, calib_size=4, test_fraction=0.2, limit=None, stats=([0.0, 0.0], [1.0, 1.0]))


def test_make_loader_is_seeded():
    ds = TensorDataset(torch.arange(20).float(), torch.arange(20))

    def order(loader):
        return [b[1].tolist() for b in loader]

    a, b = make_loader(ds, 6, shuffle=True, seed=3), make_loader(ds, 6, shuffle=True, seed=3)
    first = order(a)
    assert first == order(b) and sorted(sum(first, [])) == list(range(20))
    assert order(make_loader(ds, 6, shuffle=True, seed=4)) != order(make_loader(ds, 6, shuffle=True, seed=3))
    assert sum(order(make_loader(ds, 6, shuffle=False)), []) == list(range(20))
    assert [len(b) for b in order(make_loader(ds, 6, shuffle=False, drop_last=True))] == [6, 6, 6]


def test_make_loader_epochs_differ_but_repeat_with_the_seed():
    ds = TensorDataset(torch.arange(10).float(), torch.arange(10))
    a, b = make_loader(ds, 10, shuffle=True, seed=0), make_loader(ds, 10, shuffle=True, seed=0)
    epochs_a = [next(iter(a))[1].tolist() for _ in range(3)]
    epochs_b = [next(iter(b))[1].tolist() for _ in range(3)]
    assert epochs_a == epochs_b and epochs_a[0] != epochs_a[1]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"batch_size": 0}, "batch_size must be >= 1"), ({"batch_size": 30, "drop_last": True}, "no batch at all"),
     ({"batch_size": 4, "seed": -2}, "seed must be >= 0")],
)
def test_make_loader_bad_arguments(kwargs, pattern):
    ds = TensorDataset(torch.zeros(20), torch.zeros(20))
    with pytest.raises(ConfigError, match=pattern):
        make_loader(ds, shuffle=True, **kwargs)


def test_validators_parse_strings_and_refuse_other_types():
    assert check_int("n", " 12 ") == 12 and check_float("f", "0.5", 0, 1) == 0.5
    assert check_shape("s", "3x32x32") == (3, 32, 32) and check_shape("s", [1, "8", 8]) == (1, 8, 8)
    assert check_float("f", 0, 0, 1, open_low=False) == 0.0
    for bad, pattern in [(1.5, "integer"), ("x", "integer"), (None, "integer"), (False, "integer")]:
        with pytest.raises(ConfigError, match=f"n must be an {pattern}"):
            check_int("n", bad)
    with pytest.raises(ConfigError, match=r"f must be in \(0, 1\), got nan"):
        check_float("f", float("nan"), 0, 1)
    with pytest.raises(ConfigError, match="must be <= 5"):
        check_int("n", 6, maximum=5)
