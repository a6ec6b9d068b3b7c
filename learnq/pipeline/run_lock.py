"""One writer per run directory: ``learnq run``, ``train`` and ``demo`` claim their ``--out`` before writing into it.

No paper. The claim is an exclusive, non-blocking ``flock`` on ``OUT/.learnq.lock``, a small JSON file naming the
holder (``pid``, ``host``, ``command``, ``since``). A second writer (another process, on this host or, on a file
system with working locks such as NFSv4, on another one) gets :class:`learnq.errors.BusyError` naming the holder,
before it writes anything. The kernel drops a ``flock`` when its process ends however it ends (``kill -9``
included), so a crashed run never leaves a stale claim: the next run (``--resume`` or not) takes the file over and
rewrites it. A run that ends normally removes the file. The claim is re-entrant in one process
(``run_recipe`` claims, then ``train_recipe`` inside it claims again), and under torchrun only rank 0, the one
process that writes, claims.

Removing the file at release is safe against a claimant that opened it just before: every claimant checks, once
it holds the lock, that the path still names the file it locked, and starts over otherwise. POSIX only (``fcntl``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from learnq.errors import BusyError, ConfigError
from learnq.pipeline.train import is_main_process

LOCK_FILE = ".learnq.lock"
_HELD: dict[str, list[int]] = {}  # real path of a lock file this process holds -> [fd, depth]


def _holder(fd: int) -> str:
    """Who holds the lock on ``fd``'s file, as the file says (it may be mid-write: read it a few times)."""
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            return (f"pid {info['pid']} on host {info['host']}, `{info['command']}`, since {info['since']}")
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "a process that has not written its name yet"


def _acquire(path: str, out: Path, command: str) -> int:
    """The fd of ``path``, exclusively flock'ed and holding this process's name; BusyError if another holds it."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {path} of the run directory {out}: {exc.strerror}") \
                from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd) if exc.errno in (errno.EAGAIN, errno.EACCES) else ""
            os.close(fd)
            if holder:
                raise BusyError(f"the run directory {out} is being written by another learnq process ({holder}); "
                                "wait for it to finish, or give another --out") from None
            raise ConfigError(f"cannot lock the run directory {out} ({exc.strerror}): its file system does not "
                              "support file locks; give an --out on a local disk") from exc
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # removed (and maybe re-created) by the holder that released it: start over
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd


def _command() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m"):
        argv[0] = "learnq"
    return " ".join(argv)[:200]


@contextmanager
def claim_run_dir(out: str | os.PathLike, *, command: str | None = None) -> Iterator[None]:
    """Hold the run directory ``out`` (which must exist) for the ``with`` block; BusyError if another process holds
    it. ``command``: how the holder is named to others (default: this process's command line)."""
    if not is_main_process():
        yield
        return
    path = os.path.realpath(Path(out).expanduser() / LOCK_FILE)
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = _acquire(path, Path(out), command or _command())
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        try:
            os.unlink(path)  # while still locked: a claimant that opened it sees it gone and starts over
        except OSError:
            pass
        os.close(fd)


__all__ = ["LOCK_FILE", "claim_run_dir"]
