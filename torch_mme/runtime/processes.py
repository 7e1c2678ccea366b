"""The processes below ``serve``: MMS's Java, and per model a Python server plus its forked workers.

MMS starts each model's Python process with ``--model-name <name>`` on its
command line, and the worker it forks inherits it; that is how a model's
processes are recognised.

Finding them costs the same at 1,000 models as at 10: the template records,
when it forks a model's server, the pids of the launcher MMS started (the
server's own when MMS's Java asked the template itself) and of that server in
``<run folder>/template/models/<name>`` (``recorded``); the
model's workers are the server's children, read from
``/proc/<pid>/task/<tid>/children``. Walking the whole tree and reading every
command line (``model_processes``) is left for the slow path
(``TORCH_MME_FORK_SERVER=false``, or the template down), where nothing is
recorded.
"""

from __future__ import annotations

import contextlib
import json
import os

import psutil

RECORDS = os.path.join("template", "models")
"""The folder, under the run folder, where the template records each model's pids (``records_dir``)."""


def tree(root_pid: int) -> list[psutil.Process]:
    """``root_pid`` and every process below it."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def model_of(process: psutil.Process) -> str | None:
    """The model a process serves (``--model-name`` on its command line), None for others."""
    try:
        args = process.cmdline()
    except psutil.Error:
        return None
    if "--model-name" in args[:-1]:
        return args[args.index("--model-name") + 1]
    return None


def model_processes(root_pid: int, model_name: str) -> list[psutil.Process]:
    """The Python processes that serve ``model_name`` (its MMS server process and workers)."""
    return [p for p in tree(root_pid) if model_of(p) == model_name]


def started_for(root_pid: int, model_name: str) -> list[psutil.Process]:
    """The model's processes started from outside it: the one MMS started (the template's launcher, or
    the model's server on the slow path) and the server the template forked. The model is gone when
    none of them runs; its workers come and go below them."""
    family = model_processes(root_pid, model_name)
    pids = {p.pid for p in family}
    started = []
    for process in family:
        with contextlib.suppress(psutil.Error):
            if process.ppid() not in pids:
                started.append(process)
    return started


def records_dir(run_dir: str) -> str:
    return os.path.join(run_dir, RECORDS)


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` from the kernel (``/proc/<pid>/task/*/children``): no scan of every process."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid``, read from the kernel's children lists (a model's workers: a few)."""
    found: list[psutil.Process] = []
    pending = child_pids(pid)
    seen: set[int] = set()
    while pending and len(seen) < 10_000:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(child))
        pending += child_pids(child)
    return found


def recorded(run_dir: str, model_name: str) -> list[psutil.Process] | None:
    """The processes started for ``model_name`` as the template recorded them (its launcher, its server), those
    still running and still this model's; None when nothing is recorded (the slow path: scan instead)."""
    try:
        with open(os.path.join(records_dir(run_dir), model_name)) as f:
            record = json.load(f)
        pids = [int(record["launcher"]), int(record["server"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found = []
    for pid in dict.fromkeys(pids):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if model_of(process) == model_name:  # not a pid reused by another process since
                found.append(process)
    return found


def started(run_dir: str, root_pid: int, model_name: str) -> list[psutil.Process]:
    """``started_for``, from the template's record when there is one."""
    known = recorded(run_dir, model_name)
    return started_for(root_pid, model_name) if known is None else known


def family(run_dir: str, root_pid: int, model_name: str) -> list[psutil.Process]:
    """``model_processes``, from the template's record and the kernel's children lists when there is one."""
    known = recorded(run_dir, model_name)
    if known is None:
        return model_processes(root_pid, model_name)
    found = {p.pid: p for p in known}
    for process in known:
        for child in descendants(process.pid):
            found.setdefault(child.pid, child)
    return list(found.values())


def base(root_pid: int) -> list[psutil.Process]:
    """``root_pid`` and its direct children that serve no model (Java, the template): a handful of processes."""
    found = []
    with contextlib.suppress(psutil.Error):
        found.append(psutil.Process(root_pid))
    for pid in child_pids(root_pid):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if model_of(process) is None:
                found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    """Alive, and still the same process (psutil compares its start time); a zombie has exited."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def uss(processes: list[psutil.Process]) -> int:
    """Unique set size in bytes, summed: the memory that goes away when these processes exit."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().uss
    return total


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for the processes to exit; kill what is left after ``timeout``. Returns what had to be killed."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return alive
