"""What ``learnq.save`` leaves on disk: a writer killed with SIGKILL mid-save leaves at most a temporary file of
learnq's naming, which the next save into that folder removes (never one of a live writer); the previous model file
stays intact; model files follow the umask like any file a user writes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import learnq

CHILD = textwrap.dedent("""
    import os, sys, time
    import torch, learnq
    torch.manual_seed(1)
    model = torch.nn.Linear(256, 256)  # a 257 KB file
    real_replace = os.replace

    def stall(src, dst):  # the file is written; the writer stops right before putting it in place
        if str(dst).endswith("m.safetensors"):
            open(sys.argv[2], "w").close()
            time.sleep(600)
        real_replace(src, dst)

    os.replace = stall
    learnq.save(model, sys.argv[1])
""")


def _stalled_writer(tmp_path, target):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(ready)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended early: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the writer did not reach the end of its save within 120 s")
        time.sleep(0.02)
    return proc


def test_a_writer_killed_mid_save_leaves_nothing_after_the_next_save(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    torch.manual_seed(0)
    before = nn.Linear(256, 256)
    learnq.save(before, folder / "m.safetensors")  # the file the killed save was replacing
    old_bytes = (folder / "m.safetensors").read_bytes()
    proc = _stalled_writer(tmp_path, folder / "m.safetensors")
    try:
        temps = [p for p in folder.iterdir() if p.name != "m.safetensors"]
        assert len(temps) == 1 and temps[0].stat().st_size > 256 * 256 * 4  # as large as the model
        learnq.save(nn.Linear(2, 2), folder / "other.safetensors")  # the writer is alive: its file stays
        assert temps[0].exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert temps[0].exists()  # kill -9 leaves it ...
    assert (folder / "m.safetensors").read_bytes() == old_bytes  # ... and the previous model file intact
    learnq.save(nn.Linear(2, 2), folder / "other.safetensors")  # ... until the next save into that folder
    assert sorted(p.name for p in folder.iterdir()) == ["m.safetensors", "other.safetensors"]
    fresh = learnq.load(folder / "m.safetensors", nn.Linear(256, 256))
    assert torch.equal(fresh.weight, before.weight)


def test_stale_temporary_files_of_other_hosts_go_after_a_day_and_foreign_files_stay(tmp_path):
    from learnq.atomic_file import STALE_AGE, temp_name

    old = tmp_path / temp_name("a.safetensors", host="elsewhere", pid=12345)
    young = tmp_path / temp_name("b.safetensors", host="elsewhere", pid=12345)
    dead_here = tmp_path / temp_name("c.safetensors", host=socket.gethostname(), pid=_dead_pid())
    foreign = [tmp_path / ".tmpAbC123", tmp_path / "notes.txt.tmp1"]  # not learnq's naming: never touched
    for p in [old, young, dead_here, *foreign]:
        p.write_bytes(b"x")
    past = time.time() - STALE_AGE - 60
    os.utime(old, (past, past))
    for p in foreign:
        os.utime(p, (past, past))
    learnq.save(nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert not old.exists() and not dead_here.exists()
    assert young.exists() and all(p.exists() for p in foreign)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_model_files_follow_the_umask(umask, tmp_path):
    from learnq.pipeline.run import _write_json

    old = os.umask(umask)
    try:
        learnq.save(nn.Linear(2, 2), tmp_path / "m.safetensors")
        _write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("m.safetensors", "metrics.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
