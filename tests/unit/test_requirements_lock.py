"""The per-key install lock of handler/requirements.py: held by another process, waited for, bounded by the deadline."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from handler import requirements
from torch_mme.errors import DependencyInstallError

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # hold it until the test writes a line
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding an exclusive flock on ``tmp_path/.key.lock`` until told to let go."""
    path = tmp_path / ".key.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    yield path, proc
    proc.kill()
    proc.wait(10)


def test_a_lock_held_past_the_deadline_is_a_clear_load_error(holder, caplog):
    path, _ = holder
    caplog.set_level("INFO", logger=requirements.log.name)
    with (
        pytest.raises(DependencyInstallError, match="still installing the same requirements"),
        requirements._locked(str(path), time.monotonic() + 0.3, "m1"),
    ):
        pass
    assert "waiting for another process" in caplog.text


def test_the_lock_is_taken_once_the_other_process_lets_go(holder):
    path, proc = holder
    entered = []
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    with requirements._locked(str(path), time.monotonic() + 30, "m1"):
        entered.append(True)
        # held now: a second taker in this process (another fd) must wait
        with pytest.raises(DependencyInstallError), requirements._locked(str(path), time.monotonic() + 0.2, "m2"):
            pass
    assert entered == [True]
    with requirements._locked(str(path), time.monotonic() + 1, "m3"):  # released on leaving
        pass
