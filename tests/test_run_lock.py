"""One writer per run directory: a second ``learnq run``/``train`` into an ``--out`` that a live learnq process is
writing exits 2 with one line naming the holder; a holder killed with SIGKILL leaves no claim behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from recipe_util import tiny_recipe

from learnq.cli import main

SLOW = tiny_recipe("slow", epochs=100000, tables='[[variants]]\nmethod = "float"\n')


def _start_slow_run(tmp_path: Path, out: Path) -> subprocess.Popen:
    """A real ``learnq run`` into ``out`` that trains (almost) forever; returns once it has written a checkpoint,
    i.e. while it is busy writing the run directory."""
    recipe = tmp_path / "slow.toml"
    recipe.write_text(SLOW)
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - the child writes it until it is killed
    proc = subprocess.Popen([sys.executable, "-m", "learnq", "run", str(recipe), "--out", str(out), "--quiet"],
                            stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log.close()
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {(tmp_path / 'first.log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the first run wrote no checkpoint within 120 s")
        time.sleep(0.05)
    return proc


def test_a_second_writer_gets_one_line_naming_the_holder_and_a_killed_holder_leaves_no_claim(tmp_path, capsys):
    out = tmp_path / "shared"
    proc = _start_slow_run(tmp_path, out)
    try:
        tiny = tmp_path / "tiny.toml"
        tiny.write_text(SLOW.replace("epochs = 100000", "epochs = 1"))
        for command in ("run", "train"):
            capsys.readouterr()
            assert main([command, str(tiny), "--out", str(out), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"learnq {command}: error: "), err
            assert f"pid {proc.pid}" in err and socket.gethostname() in err and "learnq run" in err, err
        assert main(["train", str(tiny), "--out", str(out), "--resume", "--quiet"]) == 2  # --resume too
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["train", str(tiny), "--out", str(out), "--quiet", "--json"]) == 0  # the dead holder's claim is gone
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 1
    assert not (out / ".learnq.lock").exists()  # released at the end


def test_the_claim_is_held_while_the_run_writes_and_released_after(tmp_path):
    from learnq.pipeline.run_lock import LOCK_FILE, claim_run_dir

    out = tmp_path / "run"
    out.mkdir()
    with claim_run_dir(out, command="test"):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert (holder["pid"], holder["host"], holder["command"]) == (os.getpid(), socket.gethostname(), "test")
        with claim_run_dir(out, command="nested"):  # the same process again (run_recipe -> train_recipe)
            pass
        assert (out / LOCK_FILE).exists()
        code = ("import sys; from learnq.pipeline.run_lock import claim_run_dir\n"
                "from learnq.errors import BusyError\n"
                "try:\n    claim_run_dir(sys.argv[1]).__enter__()\nexcept BusyError as e:\n    print(e); sys.exit(3)\n")
        other = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
        assert other.returncode == 3, other.stderr
        assert f"pid {os.getpid()}" in other.stdout and "test" in other.stdout
    assert not (out / LOCK_FILE).exists()
    with claim_run_dir(out):  # free again
        assert (out / LOCK_FILE).exists()
