"""The processes below ``serve``: MMS's Java, and per model a Python server plus its forked workers.

MMS starts each model's Python process with ``--model-name <name>`` on its
command line, and the worker it forks inherits it; that is how a model's
processes are found, measured (USS) and waited for.
"""

from __future__ import annotations

import contextlib

import psutil


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
