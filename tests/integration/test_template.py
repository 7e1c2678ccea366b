"""Model processes forked from the template: fast path, crash recovery, unload, isolation, and the slow path."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.integration.conftest import write_script_model, write_torchscript
from torch_mme.runtime import forking, processes
from torch_mme.runtime import template as template_module
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


def test_mms_starts_no_process_for_a_model_and_notices_when_its_server_ends(tmp_path):
    """Java asks the template for the model's server (java/TemplateProcess.java) rather than starting a
    launcher: no process of the model is Java's child, so no load pays for an exec whose cost grows with
    Java's descriptors. A SIGTERM to the server ends the model's processes; the model answers again."""
    write_torchscript(tmp_path / "fast" / "model")
    with LocalServer(str(tmp_path)) as server:
        assert server.load("fast", str(tmp_path / "fast" / "model"))[0] == 200
        assert server.invoke("fast", b"[[1, 2, 3]]", "application/json")[0] == 200
        java = next(p for p in processes.tree(server.process.pid) if p.name() == "java")
        family = processes.model_processes(server.process.pid, "fast")
        assert family and not [p for p in family if p.ppid() == java.pid], [p.cmdline() for p in family]
        template = template_of(server)
        [model] = [p for p in family if p.ppid() == template.pid]  # the model's server, forked by the template
        model.send_signal(signal.SIGTERM)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running after SIGTERM to the model's server: {alive}"
        deadline = time.monotonic() + 60
        while server.invoke("fast", b"[[1, 2, 3]]", "application/json")[0] != 200:  # the watchdog restarts it
            assert time.monotonic() < deadline, "the model did not answer again"
            time.sleep(0.5)


@contextlib.contextmanager
def own_template(tmp_path: Path) -> Iterator[tuple[str, str, Path, psutil.Process]]:
    """A template of this test's own (the test process is its owner, as serve is): (the launcher serve would
    write, the template's socket, the run folder, the template); it and all it forked are killed after."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher, template_env = forking.install(str(run_dir))
    socket_path = template_env[forking.SOCKET_ENV]
    template = subprocess.Popen([sys.executable, "-m", "torch_mme.runtime.template", socket_path])
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path):
            assert template.poll() is None and time.monotonic() < deadline, "the template did not start"
            time.sleep(0.05)
        yield launcher, socket_path, run_dir, psutil.Process(template.pid)
    finally:
        with contextlib.suppress(psutil.Error):
            forked = psutil.Process(template.pid).children(recursive=True)
            for process in forked:
                process.kill()
            psutil.wait_procs(forked, timeout=10)
        template.kill()
        template.wait(10)


def worker_args(run_dir: Path, model_dir: Path, name: str) -> list[str]:
    """MMS's command line for a model's server, less its python: the worker script and its arguments."""
    return [
        template_module.mms_worker_script(),
        *("--sock-type", "unix", "--sock-name", str(run_dir / "worker.sock"), "--handler", "handler.entry:handle"),
        *("--model-path", str(model_dir), "--model-name", name, "--preload-model", "false"),
        *("--tmp-dir", str(run_dir)),
    ]


def test_the_launcher_waits_as_a_small_shell_and_passes_signals_on(tmp_path):
    """Where MMS's own Java runs (torch-mme's classes not compiled), MMS starts the launcher for each model,
    which asks the template and then becomes waiter.sh: one per resident model, so its private memory is
    paid a thousand times. It must still name the model, pass SIGTERM on to the model's server, and end
    when the server ends. Run here as MMS would run it, against a template of this test's own."""
    write_torchscript(tmp_path / "fast" / "model")
    with own_template(tmp_path) as (launcher, socket_path, run_dir, template):
        env = {**os.environ, forking.SOCKET_ENV: socket_path}
        args = worker_args(run_dir, tmp_path / "fast" / "model", "fast")
        watched = subprocess.Popen(
            [launcher, *args], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            lines = []
            for line in watched.stdout:  # the server's output comes through the launcher's stdout, as MMS reads it
                lines.append(line.decode(errors="replace"))
                if "MMS worker started." in lines[-1]:
                    break
            assert any("MMS worker started." in line for line in lines), lines
            assert not any("slow path" in line for line in lines), lines
            process = psutil.Process(watched.pid)
            command = process.cmdline()
            assert command[0] == "/bin/sh" and command[1].endswith("waiter.sh") and "fast" in command, command
            assert process.memory_full_info().uss < 2**20, process.memory_full_info()
            [model] = [p for p in template.children() if processes.model_of(p) == "fast"]
            process.send_signal(signal.SIGTERM)
            gone, alive = psutil.wait_procs([model, process], timeout=10)
            assert not alive, f"still running after SIGTERM to the launcher: {alive}"
        finally:
            if watched.poll() is None:
                watched.kill()
                watched.wait(10)


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


def _ask_as_java(socket_path: str, argv: list[str], cwd: str, fifo: bool = True) -> tuple[socket.socket, str]:
    """A request as java/TemplateProcess.java sends it (no descriptors attached); the connection and the answer."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(20)
    conn.connect(socket_path)
    request = {"argv": argv, "env": dict(os.environ), "cwd": cwd, **({"streams": "fifo"} if fifo else {})}
    data = json.dumps(request).encode()
    conn.sendall(len(data).to_bytes(4, "big") + data)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        answer += chunk
    return conn, answer.decode().strip()


def _open_in_time(path: str, seconds: float = 5.0):
    """Open ``path`` for reading as Java does (blocking), in a thread: the file, or the error; never a hang."""
    found: list = []
    opener = threading.Thread(target=lambda: found.append(_try_open(path)), daemon=True)
    opener.start()
    opener.join(seconds)
    assert found, f"opening {path} for reading blocked for {seconds} s"
    return found[0]


def _read_to_end(stream, seconds: float = 10.0) -> None:
    done = threading.Event()
    threading.Thread(target=lambda: (stream.read(), done.set()), daemon=True).start()
    assert done.wait(seconds), f"no end of {stream.name} within {seconds} s"


def _try_open(path: str):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        return exc


def test_java_asks_the_template_for_fifos_and_no_open_ever_waits(tmp_path):
    """The template's side of java/TemplateProcess.java: FIFOs for a server's output, read to their end;
    a server that dies at once leaves Java nothing to wait on; a request with neither descriptors nor FIFOs
    is refused; the streams folder is empty afterwards."""
    write_torchscript(tmp_path / "fast" / "model")
    with own_template(tmp_path) as (_, socket_path, run_dir, template):
        streams = os.path.join(os.path.dirname(socket_path), template_module.STREAMS)
        worker = template_module.mms_worker_script()
        args = worker_args(run_dir, tmp_path / "fast" / "model", "fast")
        conn, answer = _ask_as_java(socket_path, args, str(tmp_path))
        word, pid, name = answer.split()
        assert word == "pid" and re.fullmatch(r"[0-9a-f]{16}", name), answer
        out = _open_in_time(os.path.join(streams, f"{name}-stdout"))
        err = _open_in_time(os.path.join(streams, f"{name}-stderr"))
        assert not isinstance(out, Exception) and not isinstance(err, Exception), (out, err)
        conn.sendall(b"opened\n")
        lines = []
        while not any("MMS worker started." in line for line in lines):
            line = out.readline().decode()
            assert line, f"the server's stdout ended early: {lines}"
            lines.append(line)
        deadline = time.monotonic() + 10
        while os.listdir(streams):  # removed once Java said it opened them
            assert time.monotonic() < deadline, os.listdir(streams)
            time.sleep(0.05)
        conn.close()  # as Java's destroy: the template kills the server's group
        _read_to_end(out)  # the end comes with the server's
        _read_to_end(err)
        out.close()
        err.close()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(pid)).wait(10)

        # a server that ends at once (MMS's argument parser refuses), reaped before Java opens its output: the
        # open does not wait, and Java reads why it ended
        conn, answer = _ask_as_java(socket_path, [worker, "--no-such-option"], str(tmp_path))
        word, pid, name = answer.split()
        with contextlib.suppress(psutil.Error):
            psutil.Process(int(pid)).wait(10)
        assert conn.makefile("r").readline().strip() == "exit 2", "the template did not report the exit"
        out = _open_in_time(os.path.join(streams, f"{name}-stdout"))
        err = _open_in_time(os.path.join(streams, f"{name}-stderr"))
        assert not isinstance(out, Exception) and not isinstance(err, Exception), (out, err)
        conn.sendall(b"opened\n")
        said = []
        threading.Thread(target=lambda: said.append(out.read() + err.read()), daemon=True).start()
        deadline = time.monotonic() + 10
        while not said:
            assert time.monotonic() < deadline, "no end of the ended server's output"
            time.sleep(0.05)
        assert b"--no-such-option" in said[0], said[0][-500:]
        for stream in (out, err, conn):
            stream.close()
        deadline = time.monotonic() + 10
        while os.listdir(streams):
            assert time.monotonic() < deadline, os.listdir(streams)
            time.sleep(0.05)

        # A's FIFOs not opened yet when B is forked: B must not hold A's keepers, or A's end would never come
        conn_a, answer_a = _ask_as_java(socket_path, args, str(tmp_path))
        conn_b, answer_b = _ask_as_java(socket_path, worker_args(run_dir, tmp_path / "fast" / "model", "b"), "/")
        _, pid_a, name_a = answer_a.split()
        a_out = _open_in_time(os.path.join(streams, f"{name_a}-stdout"))
        a_err = _open_in_time(os.path.join(streams, f"{name_a}-stderr"))
        conn_a.sendall(b"opened\n")
        os.killpg(int(pid_a), signal.SIGKILL)
        _read_to_end(a_out)
        _read_to_end(a_err)
        assert psutil.pid_exists(int(answer_b.split()[1])), "B died with A"
        for stream in (a_out, a_err, conn_a, conn_b):
            stream.close()

        # the server dies while the template is stopped (busy, say): Java's open still finds a writer, then the end
        conn, answer = _ask_as_java(socket_path, args, str(tmp_path))
        _, pid, name = answer.split()
        template.suspend()
        try:
            os.killpg(int(pid), signal.SIGKILL)
            out = _open_in_time(os.path.join(streams, f"{name}-stdout"))
            err = _open_in_time(os.path.join(streams, f"{name}-stderr"))
        finally:
            template.resume()
        assert not isinstance(out, Exception) and not isinstance(err, Exception), (out, err)
        conn.sendall(b"opened\n")
        _read_to_end(out)
        _read_to_end(err)
        for stream in (out, err, conn):
            stream.close()

        conn, answer = _ask_as_java(socket_path, args, str(tmp_path), fifo=False)  # no streams at all
        assert not answer.startswith("pid"), answer
        conn.close()
        assert template.is_running(), "the template ended"
