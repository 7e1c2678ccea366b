"""The "Python" MMS runs for each model: asks the template to fork the model's process.

MMS starts a model by running ``<python> model_service_worker.py --model-name
N ...``; ``serve`` points MMS's python at a copy of this file. It sends its
arguments, environment, working folder and standard streams to the template
(which has torch and the handler imported already), and the template forks
a process that runs ``model_service_worker.py`` with them: the model starts
with torch already in memory, shared copy-on-write. This process stays as the
one MMS watches: it forwards SIGTERM/SIGINT to the forked process and exits
with its status; if MMS kills it, the template kills the forked process.
When the template cannot be reached, it runs the real Python instead (the
slow path, today's behaviour) and says so on stderr, which MMS logs.

Standard library only, and nothing imported that ``python -I -S`` lacks: it
runs on every model load.
"""

import array
import contextlib
import json
import os
import signal
import socket
import struct
import sys

REAL_PYTHON = "@REAL_PYTHON@"  # filled in when serve writes this launcher
SOCKET_ENV = "TORCH_MME_TEMPLATE_SOCKET"
WORKER_SCRIPT = "model_service_worker.py"


def slow_path(reason: str) -> None:
    sys.stderr.write(f"torch-mme launcher: {reason}; starting a fresh Python (slow path)\n")
    sys.stderr.flush()
    os.execv(REAL_PYTHON, [REAL_PYTHON, *sys.argv[1:]])


def main() -> None:
    if len(sys.argv) < 2 or os.path.basename(sys.argv[1]) != WORKER_SCRIPT:
        os.execv(REAL_PYTHON, [REAL_PYTHON, *sys.argv[1:]])  # MMS's other scripts (its metric collector)
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        slow_path(f"{SOCKET_ENV} is not set")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        fds = array.array("i", [0, 1, 2])
        conn.sendmsg([struct.pack("!I", len(request)), request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        reader = conn.makefile("r")
        first = reader.readline().split()
        if len(first) != 2 or first[0] != "pid":
            raise OSError(f"unexpected answer {first!r}")
        pid = int(first[1])
    except OSError as exc:
        conn.close()
        slow_path(f"template at {path} unavailable ({exc})")
        return

    def forward(signo: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(pid, signo)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for line in reader:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "exit":
            sys.exit(int(parts[1]))
    sys.exit(1)  # the template went away before the process ended


if __name__ == "__main__":
    main()
