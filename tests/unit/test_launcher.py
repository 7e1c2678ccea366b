"""The launcher lives as long as its model, one per resident model: built-in modules only, JSON of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from torch_mme.runtime import launcher

LAUNCHER_DIR = str(Path(launcher.__file__).parent)


TEXTS = ["plain", 'quote " back \\ slash', "new\nline\ttab\x00\x1f\x7f", "é ü 漢", "\U0001f600", "\udcff"]


@pytest.mark.parametrize("text", TEXTS)
def test_its_json_reads_back_as_the_same_strings(text: str):
    value = {"argv": [text, "x"], "env": {text: text}, "cwd": text}
    assert json.loads(launcher._json(value)) == value
    assert launcher._json(text).isascii()


def test_it_decodes_the_environment_as_os_does():
    assert launcher.environment() == dict(os.environ)


def test_it_imports_no_module_beyond_the_interpreters_own():
    code = f"import sys; sys.path.insert(0, {LAUNCHER_DIR!r}); import launcher; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True).stdout.split())
    assert "launcher" in loaded
    assert not loaded & {"os", "json", "re", "enum", "socket", "signal", "contextlib"}, loaded


def test_without_a_readable_waiter_it_stays_the_one_that_waits(monkeypatch, tmp_path):
    """The shell would start, fail to read a missing waiter.sh and end the model: the Python waits instead."""
    monkeypatch.setattr(launcher, "WAITER", str(tmp_path / "missing.sh"))
    execs = []
    monkeypatch.setattr(launcher.posix, "execv", lambda *args: execs.append(args))
    a, b = socket.socketpair()
    with a, b:
        launcher.wait_in_shell(a, 12345)  # returns: the caller's Python loop does the waiting
    assert execs == []
