"""Files written whole or not at all, with the permissions any file a user writes gets, and no junk after a crash.

No paper (DESIGN.md: "a crash never corrupts or leaves junk"). :func:`write_atomic` writes the bytes to a temporary
file in the target's folder, ``.<name>.learnq-tmp-<host>-<pid>-<n>`` (``n`` counts this process's writes, so
threads writing one target at once do not collide), created with mode 0666 less the umask (as
``open(path, "w")`` would: a shared ``--out`` stays readable by the group when the umask says so), flushes it to
disk (``fsync``) and renames it over the target (``os.replace``, atomic on POSIX). A reader sees the old file or the
new one, never a part. A writer killed at any point (``kill -9``, power loss) leaves the old file as it was and at
most its temporary file; the next :func:`write_atomic` into that folder removes every temporary file of this naming
whose writer is gone: one of this host whose process no longer exists, or, for another host (a shared file
system), one not modified for :data:`STALE_AGE` seconds (a live writer modifies its file while it writes). A live
writer's file is never removed; files of any other naming are never touched.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path

STALE_AGE = 24 * 3600  # seconds without a change after which another host's temporary file is taken as abandoned
_SUFFIX = ".learnq-tmp-"
_PATTERN = re.compile(r"^\.(?P<name>.+)\.learnq-tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-\d+$")
_COUNT = itertools.count()


def _host(host: str | None = None) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", host if host is not None else socket.gethostname()) or "_"


def temp_name(name: str, *, host: str | None = None, pid: int | None = None) -> str:
    """A new temporary file name for a write of ``name`` by process ``pid`` on ``host`` (default: this process)."""
    return f".{name}{_SUFFIX}{_host(host)}-{os.getpid() if pid is None else pid}-{next(_COUNT)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process holds that id
        return True
    return True


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of :func:`write_atomic` in ``folder`` whose writer is gone (see the module docstring)."""
    here, now, stale = _host(), time.time(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _PATTERN.match(entry.name)
        if match is None:
            continue
        pid = int(match["pid"])
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        mine = match["host"] == here
        if (mine and pid != os.getpid() and not _alive(pid)) or (not mine and age > STALE_AGE):
            stale.append(Path(entry.path))
    return stale


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temp_files` of ``folder`` (those already gone are skipped); returns the ones removed."""
    removed = []
    for path in stale_temp_files(folder):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or chunks of bytes) to ``path`` whole or not at all (see the module docstring).
    Raises OSError as ``open`` would; the temporary file is removed on any error."""
    target = Path(path)
    folder = target.parent
    remove_stale_temp_files(folder)
    tmp = folder / temp_name(target.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, as for any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["STALE_AGE", "remove_stale_temp_files", "stale_temp_files", "temp_name", "write_atomic"]
