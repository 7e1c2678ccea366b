"""A model's server process, forked by the template: MMS 1.1.11's worker, its workers' output on its own streams.

MMS's ``model_service_worker.py`` makes two FIFOs for each worker it forks
(``<tmp>/<id>-stdout``, ``-stderr``) and points the worker's stdout and stderr
at them; Java opens both read-write and keeps a reader thread on each for as
long as the worker lives: two descriptors and two threads in Java per resident
model. Every process Java starts (one per LoadModel: the model's launcher)
first closes, in the child, every descriptor Java holds, one by one: with
6,000 open descriptors that took 11.5 ms against 0.9 ms with none (measured
with JDK 17 here), so LoadModel grew with the number of resident models.

Here the worker keeps the server's stdout and stderr, which Java already reads
(the launcher's pipes, logged by the same ``WorkerLifeCycle`` logger, stderr
as warnings): its lines reach the log as before. In place of the FIFOs are
links to ``/dev/null``: Java opens them as MMS does, reads nothing, and its two
readers end at once. The worker removes them when it exits, as it would the FIFOs.

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

DISCONNECTED = "Frontend disconnected"
"""What MMS's protocol raises (``ValueError``) when Java closes a worker's connection."""


class Worker(MXNetModelServiceWorker):
    """MMS's worker; a forked one writes to the server's streams, not to FIFOs Java holds open."""

    def _create_io_files(self, tmp_dir: str, io_fd: str) -> None:
        self.out = os.path.join(tmp_dir, io_fd + "-stdout")
        self.err = os.path.join(tmp_dir, io_fd + "-stderr")
        os.symlink(os.devnull, self.out)  # raises if the name exists, as mkfifo would
        os.symlink(os.devnull, self.err)

    def _remap_io(self) -> None:
        """Nothing to remap: stdout and stderr are the server's, which Java reads."""

    def handle_connection(self, cl_socket: socket.socket) -> None:
        """MMS's; its closing the connection (an unload, a scale-down) ends the worker quietly.

        MMS's worker logs that as "Backend worker process died" with a traceback, into the FIFO whose
        reader Java had already stopped; on the server's streams it would reach the log at every unload.
        The links go first: the unload kills this process soon after.
        """
        try:
            super().handle_connection(cl_socket)
        except ValueError as exc:
            if str(exc) != DISCONNECTED:
                raise
            self.remove_links()

    def remove_links(self) -> None:
        for path in (self.out, self.err):
            with contextlib.suppress(OSError):
                os.remove(path)


def run() -> None:
    """MMS's main of ``model_service_worker.py`` (``sys.argv`` as MMS passed it), with ``Worker``."""
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
        worker.run_server()
    except TimeoutError:  # socket.timeout, as MMS catches it
        logging.error("Backend worker did not receive connection in: %d", SOCKET_ACCEPT_TIMEOUT)
    except Exception:
        logging.error("Backend worker process died", exc_info=True)
    finally:
        if sock_type == "unix" and socket_name and os.path.exists(socket_name):
            os.remove(socket_name)
    sys.exit(1)
