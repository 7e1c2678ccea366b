"""A model's server process, forked by the template: MMS 1.1.11's worker, its workers' output on its own streams.

MMS's ``model_service_worker.py`` makes two FIFOs for each worker it forks
(``<tmp>/<id>-stdout``, ``-stderr``) and points the worker's stdout and stderr
at them; Java opens both read-write and keeps a reader thread on each for as
long as the worker lives: two descriptors and two threads in Java per resident
model. Every process Java starts first closes, in the child, every descriptor
Java holds, one by one: with 6,000 open descriptors that took 11.5 ms against
0.9 ms with none (measured with JDK 17 here). Java now starts none per load
(``java/TemplateProcess.java``), but still would where it cannot ask the
template, and MMS's own periodic scripts do.

Here the worker keeps the server's stdout and stderr, which Java already reads
(the server's FIFOs, or the launcher's pipes; logged by the same
``WorkerLifeCycle`` logger, stderr as warnings): its lines reach the log as before. In place of the FIFOs are
links to ``/dev/null``: Java opens them as MMS does, reads nothing, and its two
readers end at once. An unload kills the worker before it could remove them,
so each worker lists them in ``<template>/streams/<server pid>.links`` and the
template removes them when it reaps the server (``remove_links``).

``run`` is MMS's ``__main__`` block of that file, run from its module (the
template preloads it) with this one subclass; the slow path
(``TORCH_MME_FORK_SERVER=false``) runs MMS's own script, FIFOs and all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

from mms import model_service_worker
from mms.arg_parser import ArgParser
from mms.model_service_worker import SOCKET_ACCEPT_TIMEOUT, MXNetModelServiceWorker

from torch_mme.common import read_regular_file

DISCONNECTED = "Frontend disconnected"
"""What MMS's protocol raises (``ValueError``) when Java closes a worker's connection."""


IO_SUFFIXES = ("-stdout", "-stderr")
"""How MMS names a worker's two streams in its tmp folder: ``<tmp>/<id>-stdout`` and ``-stderr``."""


def links_file(streams_dir: str, server_pid: int) -> str:
    """Where the workers of server ``server_pid`` list their links for the template to remove."""
    return os.path.join(streams_dir, f"{server_pid}.links")


def remove_links(listing: str, tmp_dir: str) -> None:
    """Remove the links a reaped server's workers listed, and the list: only links to /dev/null named as
    MMS names a worker's streams, directly in the server's own tmp folder (model code could write the list)."""
    try:
        data = read_regular_file(listing)
        os.remove(listing)
    except OSError:  # none, or not a regular file: a model's code put it there, and it is left as it is
        return
    for path in data.decode(errors="replace").split("\n"):
        with contextlib.suppress(OSError, ValueError):  # ValueError: a NUL in the path
            ours = path.endswith(IO_SUFFIXES) and os.path.realpath(os.path.dirname(path)) == tmp_dir
            if ours and os.readlink(path) == os.devnull:
                os.remove(path)


class Worker(MXNetModelServiceWorker):
    """MMS's worker; a forked one writes to the server's streams, not to FIFOs Java holds open."""

    links: str | None = None
    """The list this server's workers add their links to (``links_file``); None: not listed."""

    def _create_io_files(self, tmp_dir: str, io_fd: str) -> None:
        self.out = os.path.join(tmp_dir, io_fd + IO_SUFFIXES[0])
        self.err = os.path.join(tmp_dir, io_fd + IO_SUFFIXES[1])
        os.symlink(os.devnull, self.out)  # raises if the name exists, as mkfifo would
        os.symlink(os.devnull, self.err)
        if self.links:
            with contextlib.suppress(OSError), open(self.links, "a") as f:
                f.write(f"{self.out}\n{self.err}\n")

    def _remap_io(self) -> None:
        """Nothing to remap: stdout and stderr are the server's, which Java reads."""

    def handle_connection(self, cl_socket: socket.socket) -> None:
        """MMS's; its closing the connection (an unload, a scale-down) ends the worker quietly.

        MMS's worker logs that as "Backend worker process died" with a traceback, into the FIFO whose
        reader Java had already stopped; on the server's streams it would reach the log at every unload.
        """
        try:
            super().handle_connection(cl_socket)
        except ValueError as exc:
            if str(exc) != DISCONNECTED:
                raise


def run(streams_dir: str | None = None) -> None:
    """MMS's main of ``model_service_worker.py`` (``sys.argv`` as MMS passed it), with ``Worker``; its workers
    list their links in ``streams_dir`` (the template's) for the template to remove."""
    mms_path = os.path.dirname(os.path.realpath(model_service_worker.__file__))
    while mms_path in sys.path:  # as MMS's script does: its folder's modules would shadow others
        sys.path.remove(mms_path)
    sock_type = socket_name = None
    try:
        logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.INFO)
        logging.info("model_service_worker started with args: %s", " ".join(sys.argv[1:]))
        args = ArgParser.model_service_worker_args().parse_args()
        socket_name, sock_type = args.sock_name, args.sock_type
        model_request = {
            "handler": args.handler.encode("utf-8"),
            "modelPath": args.model_path.encode("utf-8"),
            "modelName": args.model_name.encode("utf-8"),
        }
        worker = Worker(sock_type, socket_name, args.host, args.port, model_request, args.preload_model, args.tmp_dir)
        if streams_dir:
            worker.links = links_file(streams_dir, os.getpid())
        worker.run_server()
    except TimeoutError:  # socket.timeout, as MMS catches it
        logging.error("Backend worker did not receive connection in: %d", SOCKET_ACCEPT_TIMEOUT)
    except Exception:
        logging.error("Backend worker process died", exc_info=True)
    finally:
        if sock_type == "unix" and socket_name and os.path.exists(socket_name):
            os.remove(socket_name)
    sys.exit(1)
