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


def test_the_process_mms_watches_waits_as_a_small_shell_and_passes_signals_on(tmp_path):
    """Once the fork is made, the launcher MMS started becomes waiter.sh: one per resident model, so its
    private memory is paid a thousand times. It must still name the model and pass SIGTERM on to the
    model's server, and end when the server ends."""
    write_torchscript(tmp_path / "fast" / "model")
    with LocalServer(str(tmp_path)) as server:
        assert server.load("fast", str(tmp_path / "fast" / "model"))[0] == 200
        assert server.invoke("fast", b"[[1, 2, 3]]", "application/json")[0] == 200
        java = next(p for p in processes.tree(server.process.pid) if p.name() == "java")
        family = processes.model_processes(server.process.pid, "fast")
        [watched] = [p for p in family if p.ppid() == java.pid]
        args = watched.cmdline()
        assert args[0] == "/bin/sh" and args[1].endswith("waiter.sh"), args
        assert watched.memory_full_info().uss < 2**20, watched.memory_full_info()
        template = template_of(server)
        [model] = [p for p in family if p.ppid() == template.pid]  # the model's server, forked by the template
        # SIGTERM passes on to the model's server, which ends; the watched process ends with it, as MMS sees
        watched.send_signal(signal.SIGTERM)
        gone, alive = psutil.wait_procs([model, watched], timeout=10)
        assert not alive, f"still running after SIGTERM to the watched process: {alive}"


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


TALKER = """
    import logging
    import sys

    def model_fn(model_dir):
        print("talker: loading", flush=True)
        return None

    def predict_fn(data, model):
        print("talker: predicting on stdout", flush=True)
        print("talker: complaining on stderr", file=sys.stderr, flush=True)
        logging.getLogger("talker").warning("talker: a warning through logging")
        return [1]
"""


def java_descriptors(server: LocalServer) -> list[str]:
    java = next(p for p in processes.tree(server.process.pid) if p.name() == "java")
    found = []
    for fd in os.listdir(f"/proc/{java.pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{java.pid}/fd/{fd}"))
        except OSError:
            continue
    return found


def test_a_forked_workers_output_reaches_the_log_and_java_holds_no_fifo_for_it(tmp_path):
    """A model's prints and warnings while it serves reach serve's log, stderr as warnings, as they did
    through MMS's two FIFOs per worker; Java holds none of those FIFOs (each descriptor Java holds is closed
    again by every process it starts, one per LoadModel), and an unload logs no worker traceback."""
    write_script_model(tmp_path / "talker" / "model", TALKER)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log, LocalServer(str(tmp_path), log=log) as server:
        assert server.load("talker", str(tmp_path / "talker" / "model"))[0] == 200
        assert server.invoke("talker", b"[0]", "application/json")[0] == 200
        links = java_descriptors(server)
        assert not [d for d in links if d.endswith(("-stdout", "-stderr"))], links
        args = processes.model_processes(server.process.pid, "talker")[0].cmdline()
        tmp_dir = args[args.index("--tmp-dir") + 1]
        assert server.unload("talker") == 200
        assert not [n for n in os.listdir(tmp_dir) if n.endswith(("-stdout", "-stderr"))]  # the worker removed them
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    assert any("[INFO ]" in line and line.endswith("talker: predicting on stdout") for line in lines), text[-3000:]
    assert any("[WARN ]" in line and line.endswith("talker: complaining on stderr") for line in lines)
    assert any(line.endswith("talker: a warning through logging") for line in lines)
    assert "Traceback" not in text and "Backend worker process died" not in text, text[-3000:]
