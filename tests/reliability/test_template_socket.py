"""The template's Unix socket: only MMS's launchers may have it fork, and only MMS's worker.

The template used to fork and run any ``argv`` (any script, environment and
folder) for any process of the same user that reached its socket. Here a
canary script must never run: asked for by this test process (the same uid,
but not a descendant of ``serve``), and by a model's own code inside ``serve``
(a descendant) naming the canary, a copy of MMS's worker elsewhere, or a
symlink called ``model_service_worker.py``. Legitimate loads still fork from
the template afterwards.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.integration.conftest import write_script_model, write_torchscript
from tests.reliability.conftest import record, start_server, stop_server
from torch_mme.runtime import processes

CLIENT = '''
def ask_template(path, argv, cwd="/", fifo=False):
    """One request as the launcher sends it (or as MMS's Java does: ``fifo``, no descriptors attached); the
    template's first answer line ('' when it hangs up)."""
    import array, json, os, socket, struct

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(20)
    try:
        conn.connect(path)
        request = {"argv": argv, "env": dict(os.environ), "cwd": cwd}
        if fifo:
            request["streams"] = "fifo"
        data = json.dumps(request).encode()
        head = [struct.pack("!I", len(data)), data]
        fds = array.array("i", [0, 1, 2])
        conn.sendmsg(head, [] if fifo else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        return conn.makefile("r").readline().strip()
    except OSError as exc:
        return f"error: {exc}"
    finally:
        conn.close()
'''

ATTACKER = (
    CLIENT
    + """
import os

SCRIPTS = @SCRIPTS@


def model_fn(model_dir):
    path = os.environ["TORCH_MME_TEMPLATE_SOCKET"]  # a model process sees it: the launcher passes its environment
    return {
        name + kind: ask_template(path, [script, "--model-name", "x"], fifo=bool(kind))
        for name, script in SCRIPTS.items()
        for kind in ("", " (fifo)")
    }


def predict_fn(data, model):
    return model


def output_fn(prediction, accept):
    return __import__("json").dumps(prediction), "application/json"
"""
)

namespace: dict = {}
exec(CLIENT, namespace)  # noqa: S102 - the same client, run from this (non-descendant) process
ask_template = namespace["ask_template"]


def template_socket(server) -> str:
    found = [p for p in processes.tree(server.process.pid) if "torch_mme.runtime.template" in " ".join(p.cmdline())]
    assert found, "no template under serve"
    return min(found, key=lambda p: p.create_time()).cmdline()[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("template-attack")
    canary = base / "canary-ran"
    scripts = {}
    script = base / "canary.py"
    script.write_text(f"open({str(canary)!r}, 'a').write('canary.py ran\\n')\n")
    scripts["canary"] = str(script)
    copy = base / "copy" / "model_service_worker.py"  # MMS's file name, not MMS's file
    copy.parent.mkdir()
    copy.write_text(f"open({str(canary)!r}, 'a').write('copy ran\\n')\n")
    scripts["copy"] = str(copy)
    link = base / "link" / "model_service_worker.py"
    link.parent.mkdir()
    link.symlink_to(script)
    scripts["symlink"] = str(link)
    root = base / "models"
    write_script_model(root / "attacker" / "model", ATTACKER.replace("@SCRIPTS@", repr(scripts)))
    write_torchscript(root / "legit" / "model")
    logs = tmp_path_factory.mktemp("logs")
    server = start_server(root, logs)
    try:
        yield {"server": server, "root": root, "canary": canary, "scripts": scripts, "log": logs / "serve.log"}
    finally:
        stop_server(server)


def test_the_socket_is_in_a_private_folder(world):
    path = template_socket(world["server"])
    folder = os.path.dirname(path)
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700 and os.lstat(folder).st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0


def test_a_process_outside_the_server_is_refused(world):
    path = template_socket(world["server"])
    answers = {
        name + kind: ask_template(path, [script, "--model-name", "x"], fifo=bool(kind))
        for name, script in world["scripts"].items()
        for kind in ("", " (fifo)")
    }
    record("template socket: outside process", requests=len(answers))
    assert all(not answer.startswith("pid") for answer in answers.values()), answers
    assert not world["canary"].exists(), world["canary"].read_text()
    assert "not a descendant of the server" in world["log"].read_text()


def test_a_model_process_asking_for_another_script_is_refused(world):
    server, root = world["server"], world["root"]
    status, body = server.load("attacker", str(root / "attacker" / "model"))
    assert status == 200, body
    status, _, answer = server.invoke("attacker", b"[0]", "application/json")
    assert status == 200, answer
    answers = json.loads(answer)
    record("template socket: model process", requests=len(answers))
    assert set(answers) == {name + kind for name in world["scripts"] for kind in ("", " (fifo)")}
    assert all(not a.startswith("pid") for a in answers.values()), answers
    assert not world["canary"].exists(), world["canary"].read_text()
    assert "is not MMS's worker" in world["log"].read_text()


def test_legitimate_loads_still_fork_from_the_template(world):
    server, root = world["server"], world["root"]
    assert server.load("legit", str(root / "legit" / "model"))[0] == 200
    assert server.invoke("legit", b"[[1, 2, 3]]", "application/json")[0] == 200
    template = [p for p in processes.tree(server.process.pid) if "torch_mme.runtime.template" in " ".join(p.cmdline())]
    template_pid = min(template, key=lambda p: p.create_time()).pid
    assert any(p.ppid() == template_pid for p in processes.model_processes(server.process.pid, "legit"))
    assert not Path(world["canary"]).exists()
