"""A throw-away PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl start`` listening on
127.0.0.1 only (and a Unix socket inside that directory), trust authentication for one role, ``fsync`` off.

Found where Debian's ``postgresql`` package puts it (``/usr/lib/postgresql/<version>/bin``), or on ``PATH``.
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (``runuser``), which owns the
temporary directory. :class:`PostgresUnavailable` says what is missing when it cannot start.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROLE = "learnq"


class PostgresUnavailable(Exception):
    """Why no server could be started here (missing binaries, driver or user)."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with initdb and pg_ctl, else the directory of ``initdb`` on PATH."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(os.path.realpath(on_path)).parent)
    return next((d for d in reversed(found) if (d / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bindir: Path
    root: Path
    port: int
    prefix: list[str] = field(default_factory=list)  # runuser -u postgres -- (as root)

    def _run(self, *argv: str, as_owner: bool = True) -> None:
        cmd = (self.prefix if as_owner else []) + list(argv)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise PostgresUnavailable(f"{' '.join(argv[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def database(self, name: str, driver: str = "+psycopg") -> str:
        """Create database ``name``; its SQLAlchemy URL (``postgresql<driver>://learnq@127.0.0.1:PORT/name``)."""
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, name,
                  as_owner=False)
        return f"postgresql{driver}://{ROLE}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self.prefix + [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                                      "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Server:
    """Start a server (see the module docstring); PostgresUnavailable with the reason if it cannot."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL's binaries (initdb, pg_ctl) are not installed; Debian: apt-get install "
                                  "postgresql (`make test-postgres` does it)")
    try:
        import psycopg  # noqa: F401 - the driver the workers' storage URL names
    except ImportError as exc:
        raise PostgresUnavailable("the psycopg (3) driver is not installed: pip install 'learnq[postgres]' "
                                  "(`make test-postgres` does it)") from exc
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server as") \
                from exc
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and `runuser` is missing to start the server as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="learnq-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = Server(bindir=bindir, root=root, port=_free_port(), prefix=prefix)
    try:
        server._run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                    "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        server._run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-o", options,
                    "-w", "-t", "60", "start")
    except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        log = root / "server.log"
        tail = log.read_text()[-2000:] if log.is_file() else ""
        server.stop()
        raise PostgresUnavailable(f"cannot start PostgreSQL from {bindir}: {exc} {tail}".strip()) from exc
    return server
