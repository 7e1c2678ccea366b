"""Model processes forked from the template: fast path, crash recovery, unload, isolation, and the slow path."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil

from tests.integration.conftest import write_script_model, write_torchscript
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

STATE_PROBE = """
    import random
    import numpy as np
    import torch
    import handler

    def model_fn(model_dir):
        seen = getattr(handler, "_probe_mark", None)
        handler._probe_mark = model_dir  # a module the template imported: must not leak to other models
        return {"seen": seen, "torch": torch.rand(1).item(), "numpy": float(np.random.rand()),
                "random": random.random(), "pid": __import__("os").getpid()}

    def predict_fn(data, model):
        return model

    def output_fn(prediction, accept):
        return __import__("json").dumps(prediction), "application/json"
"""


def template_of(server: LocalServer) -> psutil.Process:
    found = [p for p in processes.tree(server.process.pid) if "torch_mme.runtime.template" in " ".join(p.cmdline())]
    assert found, "no template process under serve"
    return min(found, key=lambda p: p.create_time())  # the template itself, not a model process forked from it


def forked_from(template: psutil.Process, server: LocalServer, name: str) -> bool:
    return any(p.ppid() == template.pid for p in processes.model_processes(server.process.pid, name))


def test_a_model_loads_and_answers_through_the_template(tmp_path):
    write_torchscript(tmp_path / "fast" / "model")
    with LocalServer(str(tmp_path)) as server:
        template = template_of(server)
        assert server.load("fast", str(tmp_path / "fast" / "model"))[0] == 200
        assert forked_from(template, server, "fast")
        assert server.invoke("fast", b"[[1, 2, 3]]", "application/json")[0] == 200
        # unload takes the forked processes too
        assert server.unload("fast") == 200
        assert processes.model_processes(server.process.pid, "fast") == []
        assert template.is_running()


def test_the_process_mms_watches_waits_as_a_small_shell_and_forwards_sigterm(tmp_path):
    """Once the fork is made, the launcher MMS started becomes waiter.sh: one per resident model, so its
    private memory is paid a thousand times; it must still name the model and pass SIGTERM on."""
    write_torchscript(tmp_path / "fast" / "model")
    with LocalServer(str(tmp_path)) as server:
        assert server.load("fast", str(tmp_path / "fast" / "model"))[0] == 200
        assert server.invoke("fast", b"[[1, 2, 3]]", "application/json")[0] == 200
        java = next(p for p in processes.tree(server.process.pid) if p.name() == "java")
        [watched] = [p for p in processes.model_processes(server.process.pid, "fast") if p.ppid() == java.pid]
        args = watched.cmdline()
        assert args[0] == "/bin/sh" and args[1].endswith("waiter.sh"), args
        assert watched.memory_full_info().uss < 2**20, watched.memory_full_info()
        template = template_of(server)
        [forked] = [p for p in processes.model_processes(server.process.pid, "fast") if p.ppid() == template.pid]
        watched.send_signal(signal.SIGTERM)
        psutil.wait_procs([forked], timeout=10)
        assert not forked.is_running(), "SIGTERM to the watched process did not reach the model's server"


def test_two_models_forked_from_the_template_share_no_state(tmp_path):
    for name in ("one", "two"):
        write_script_model(tmp_path / name / "model", STATE_PROBE)
    with LocalServer(str(tmp_path)) as server:
        answers = {}
        for name in ("one", "two"):
            assert server.load(name, str(tmp_path / name / "model"))[0] == 200
            status, _, body = server.invoke(name, b"[0]", "application/json")
            assert status == 200
            answers[name] = json.loads(body)
        assert answers["one"]["seen"] is None and answers["two"]["seen"] is None
        assert answers["one"]["pid"] != answers["two"]["pid"]
        for generator in ("torch", "numpy", "random"):  # every generator reseeded in each child
            assert answers["one"][generator] != answers["two"][generator], generator


def test_a_crashed_template_is_survived_and_restarted(tmp_path):
    for name in ("before", "during", "after"):
        write_torchscript(tmp_path / name / "model")
    with LocalServer(str(tmp_path)) as server:
        assert server.load("before", str(tmp_path / "before" / "model"))[0] == 200
        template = template_of(server)
        template.send_signal(signal.SIGKILL)
        template.wait(5)
        # the next load works at once (slow path or the restarted template), and loaded models keep answering
        assert server.load("during", str(tmp_path / "during" / "model"))[0] == 200
        assert server.invoke("during", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert server.invoke("before", b"[[1, 2, 3]]", "application/json")[0] == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                restarted = template_of(server)
                if restarted.pid != template.pid and os.path.exists(_socket_of(restarted)):
                    break
            except (AssertionError, psutil.Error):
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the template was not restarted")
        assert server.load("after", str(tmp_path / "after" / "model"))[0] == 200
        assert forked_from(restarted, server, "after")


def _socket_of(template: psutil.Process) -> str:
    return template.cmdline()[-1]


def test_the_slow_path_still_works_when_the_template_is_off(tmp_path):
    write_torchscript(tmp_path / "slow" / "model")
    with LocalServer(str(tmp_path), env={"TORCH_MME_FORK_SERVER": "false"}) as server:
        assert not [
            p for p in processes.tree(server.process.pid) if "torch_mme.runtime.template" in " ".join(p.cmdline())
        ]
        assert server.load("slow", str(tmp_path / "slow" / "model"))[0] == 200
        assert server.invoke("slow", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert server.unload("slow") == 200
