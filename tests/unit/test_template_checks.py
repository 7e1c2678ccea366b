"""The template's checks of who asks it to fork, and for what (the socket itself: tests/reliability)."""

from __future__ import annotations

import array
import os
import socket
import struct
import subprocess
import sys

import pytest

from torch_mme.runtime import template


def test_the_peer_credentials_come_from_the_kernel():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert template.peer_credentials(left) == (os.getpid(), os.geteuid(), os.getegid())


def test_descendants_are_found_through_proc():
    assert template.is_descendant(os.getpid(), os.getpid())
    assert template.is_descendant(os.getpid(), os.getppid())
    assert not template.is_descendant(os.getppid(), os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert template.is_descendant(child.pid, os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not template.is_descendant(child.pid, os.getpid())  # gone


def test_only_mms_worker_is_run(tmp_path):
    worker = template.mms_worker_script()
    assert worker.endswith("model_service_worker.py") and os.path.isfile(worker)
    good = {"argv": [worker, "--sock-type", "unix"], "env": {"A": "b"}, "cwd": str(tmp_path)}
    template.check_request(good, worker)
    relative = {**good, "argv": [os.path.relpath(worker, tmp_path)]}
    template.check_request(relative, worker)
    copy = tmp_path / "model_service_worker.py"
    copy.write_text("")
    for request in (
        {**good, "argv": [str(copy)]},
        {**good, "argv": ["/bin/sh", "-c", "id"]},
        {**good, "argv": []},
        {**good, "argv": [worker, 1]},
        {**good, "env": {"A": 1}},
        {**good, "cwd": None},
        ["not", "a", "dict"],
    ):
        with pytest.raises(template.Refused):
            template.check_request(request, worker)


def test_another_uid_or_a_stranger_is_refused():
    with pytest.raises(template.Refused, match="uid"):
        template.check_peer((os.getpid(), os.geteuid() + 1, 0), os.getppid())
    with pytest.raises(template.Refused, match="not a descendant"):
        template.check_peer((os.getppid(), os.geteuid(), 0), os.getpid())
    template.check_peer((os.getpid(), os.geteuid(), 0), os.getppid())


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_the_template_will_not_listen_in_a_folder_others_can_reach(tmp_path, mode):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(SystemExit, match="mode 0700"):
        template.check_private_folder(str(folder))
    os.chmod(folder, 0o700)
    template.check_private_folder(str(folder))
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(SystemExit):
        template.check_private_folder(str(link))


@pytest.mark.parametrize(
    "payload", [b"[" * 100_000, b"not json", b'{"argv": '], ids=["nested-100000", "garbage", "truncated-json"]
)
def test_a_bad_request_is_a_value_error_and_its_descriptors_are_closed(payload):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        before = len(os.listdir("/proc/self/fd"))
        fds = array.array("i", [0, 1, 2])
        right.sendmsg([struct.pack("!I", len(payload)), payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        with pytest.raises(ValueError):  # was a RecursionError for the nested one: the template died
            template._receive(left)
        assert len(os.listdir("/proc/self/fd")) == before
