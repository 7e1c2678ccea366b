"""A model's processes from the template's pid record and the kernel's children lists, not a scan of the tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torch_mme.runtime import processes, template

SLEEPER = "import subprocess, sys, time; {spawn}time.sleep(60)"


def _start(name: str, with_child: bool = False) -> subprocess.Popen:
    spawn = (
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '--model-name', sys.argv[2]]); "
        if with_child
        else ""
    )
    return subprocess.Popen([sys.executable, "-c", SLEEPER.format(spawn=spawn), "--model-name", name])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / processes.RECORDS).mkdir(parents=True)
    return tmp_path


def _record(run_dir: Path, name: str, launcher: int, server: int) -> None:
    (run_dir / processes.RECORDS / name).write_text(json.dumps({"launcher": launcher, "server": server}))


def _wait_for_children(pid: int, count: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while len(processes.child_pids(pid)) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_family_is_the_recorded_pids_and_the_servers_children(run_dir: Path):
    launcher, server = _start("m"), _start("m", with_child=True)
    try:
        _wait_for_children(server.pid, 1)
        _record(run_dir, "m", launcher.pid, server.pid)
        assert [p.pid for p in processes.recorded(str(run_dir), "m")] == [launcher.pid, server.pid]
        family = {p.pid for p in processes.family(str(run_dir), 1, "m")}
        assert family == {launcher.pid, server.pid, *processes.child_pids(server.pid)}
        assert len(family) == 3
        assert [p.pid for p in processes.started(str(run_dir), 1, "m")] == [launcher.pid, server.pid]
    finally:
        for process in (launcher, server):
            process.kill()
            process.wait()


def test_a_pid_reused_by_another_process_is_not_the_models(run_dir: Path):
    other = _start("someone-else")
    try:
        _record(run_dir, "m", other.pid, other.pid)
        assert processes.recorded(str(run_dir), "m") == []
    finally:
        other.kill()
        other.wait()


def test_without_a_record_the_tree_is_scanned(run_dir: Path, monkeypatch: pytest.MonkeyPatch):
    scanned = []
    monkeypatch.setattr(processes, "model_processes", lambda root, name: scanned.append(name) or [])
    assert processes.recorded(str(run_dir), "absent") is None
    assert processes.family(str(run_dir), 1, "absent") == []
    assert scanned == ["absent"]


def test_base_is_the_root_and_its_children_that_serve_no_model():
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    model = _start("m")
    try:
        import os

        _wait_for_children(os.getpid(), 2)
        pids = {p.pid for p in processes.base(os.getpid())}
        assert os.getpid() in pids and plain.pid in pids and model.pid not in pids
    finally:
        for process in (plain, model):
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["w.py", "--model-name", "a.b-c_1"], "a.b-c_1"),
        (["w.py", "--model-name", "../x"], None),
        (["w.py", "--model-name", ".hidden"], None),
        (["w.py", "--model-name", "a/b"], None),
        (["w.py", "--model-name"], None),
        (["w.py"], None),
    ],
)
def test_the_template_records_only_names_a_file_may_have(argv: list[str], name: str | None):
    assert template.model_name(argv) == name
