"""The "Python" MMS runs for a model when its Java cannot ask the template itself: asks the template to fork it.

MMS's Java with torch-mme's classes asks the template directly
(``java/TemplateProcess.java``); this launcher runs when that fails (the
template is down: it then takes the slow path too) or when MMS's own classes
run (no Java compiler), and for MMS's other scripts.

MMS starts a model by running ``<python> model_service_worker.py --model-name
N ...``; ``serve`` points MMS's python at a copy of this file. It sends its
arguments, environment, working folder and standard streams to the template
(which has torch and the handler imported already), and the template forks
a process that runs ``model_service_worker.py`` with them: the model starts
with torch already in memory, shared copy-on-write. This process stays as the
one MMS watches: it forwards SIGTERM/SIGINT to the forked process and exits
with its status; if MMS kills it, the template kills the forked process.
Once the fork is made, it execs ``waiter.sh`` (``/bin/sh``), which does that
waiting for 0.2 MB of private memory instead of a Python's 3 MB; where the
shell cannot be run, this Python waits itself.
When the template cannot be reached, it runs the real Python instead (the
slow path, today's behaviour) and says so on stderr, which MMS logs.

It runs on every model load and then lives as long as the model, one per
resident model: it imports only built-in modules (``posix``, ``_socket``,
``_signal``; not ``os``, ``socket``, ``signal`` or ``json``, which pull in
``enum``, ``re`` and more), which keeps it at about 3.4 MB of USS instead of 4.7.
The request is JSON written by ``_json``, what ``json.dumps`` would write.
"""

import _signal
import _socket
import posix
import sys

REAL_PYTHON = "@REAL_PYTHON@"  # filled in when serve writes this launcher
WAITER = "@WAITER@"  # likewise: the path of waiter.sh beside it
SHELL = "/bin/sh"
TEMPLATE_FD = 3
"""The descriptor the waiter reads the template's connection on."""
SOCKET_ENV = "TORCH_MME_TEMPLATE_SOCKET"
WORKER_SCRIPT = "model_service_worker.py"


def _string(text: str) -> str:
    """A JSON string for ``text``, read back as ``json.dumps(text)`` is (every non-ASCII character escaped)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


def _json(value: object) -> str:
    """JSON for the request: strings, lists of strings and dicts of strings."""
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(_string(k) + ": " + _json(v) for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def environment() -> dict:
    """``os.environ``, decoded as ``os`` decodes it (the file system encoding, surrogateescape)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors) for k, v in posix.environ.items()}


def slow_path(reason: str) -> None:
    sys.stderr.write(f"torch-mme launcher: {reason}; starting a fresh Python (slow path)\n")
    sys.stderr.flush()
    posix.execv(REAL_PYTHON, [REAL_PYTHON, *sys.argv[1:]])


class _Lines:
    """The lines the template sends, as lists of words; ends when it closes the connection."""

    def __init__(self, conn: "_socket.socket") -> None:
        self.conn = conn
        self.buffer = b""

    def __iter__(self):
        return self

    def __next__(self) -> list:
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(4096)
            if not chunk:
                raise StopIteration
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().split()


def wait_in_shell(conn: "_socket.socket", pid: int) -> None:
    """Become ``waiter.sh`` (the same process, so MMS still watches it); returns only if that fails."""
    if not posix.access(WAITER, posix.R_OK):  # the shell would start, fail to read it and end the model
        return
    try:
        posix.dup2(conn.fileno(), TEMPLATE_FD)
        posix.set_inheritable(TEMPLATE_FD, True)
        posix.execv(SHELL, [SHELL, WAITER, str(pid), *sys.argv[1:]])
    except OSError:
        pass


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].rsplit("/", 1)[-1] != WORKER_SCRIPT:
        posix.execv(REAL_PYTHON, [REAL_PYTHON, *sys.argv[1:]])  # MMS's other scripts (its metric collector)
    env = environment()
    path = env.get(SOCKET_ENV, "")
    if not path:
        slow_path(f"{SOCKET_ENV} is not set")
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = _json({"argv": sys.argv[1:], "env": env, "cwd": posix.getcwd()}).encode()
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
        message = len(request).to_bytes(4, "big") + request
        sent = conn.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        conn.sendall(message[sent:])
        lines = _Lines(conn)
        first = next(lines, [])
        if len(first) != 2 or first[0] != "pid":
            raise OSError(f"unexpected answer {first!r}")
        pid = int(first[1])
    except (OSError, ValueError) as exc:
        conn.close()
        slow_path(f"template at {path} unavailable ({exc})")
        return

    def forward(signo: int, frame: object) -> None:
        try:  # noqa: SIM105 (contextlib is one more import per resident model)
            posix.killpg(pid, signo)
        except OSError:
            pass

    _signal.signal(_signal.SIGTERM, forward)
    _signal.signal(_signal.SIGINT, forward)
    if not lines.buffer:  # nothing read past the pid: the shell reads the rest
        wait_in_shell(conn, pid)
    for parts in lines:
        if len(parts) == 2 and parts[0] == "exit":
            sys.exit(int(parts[1]))
    sys.exit(1)  # the template went away before the process ended


if __name__ == "__main__":
    main()
