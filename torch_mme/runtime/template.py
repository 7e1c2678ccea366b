"""The template: one long-lived process with torch and the handler imported, forking model processes on demand.

A cold LoadModel used to spend about a second in a fresh interpreter
importing torch, and every model paid ~145 MB for its own copy. The template
imports all of that once; each model's process is forked from it and shares
those pages copy-on-write (``gc.freeze`` keeps the collector from touching
them). Fork safety: the template starts no threads, touches no GPU (importing
torch does neither) and holds no sockets but its own listener, which children
close; children reseed every random generator.

Protocol (from ``torch_mme.runtime.launcher``): a length-prefixed JSON request
``{"argv", "env", "cwd"}`` with the launcher's fds 0-2 attached (SCM_RIGHTS);
the template answers ``pid <n>`` and later ``exit <status>``. If the launcher
goes away first (MMS killed it), the forked process group is killed. MMS's
Java asks directly (``java/TemplateProcess.java``: no process started per
load), and cannot attach descriptors: its request says ``"streams": "fifo"``.
The template makes two FIFOs in ``streams/`` beside its socket, opens each
read-write (a "keeper": nobody's open of either end can block while it is
held) and write-only (the server's stdout and stderr; stdin is /dev/null),
forks, and answers ``pid <n> <name>``: Java opens ``streams/<name>-stdout``
and ``-stderr`` for reading and writes ``opened``. Then (or when Java hangs up)
the FIFOs are removed and only then the keepers closed, so an open by path
finds a writer or no file, never waits; Java's reads end when the server and
its workers have exited. A server reaped before Java opened them keeps them
until then, so Java reads why it ended.

Bookkeeping: for each fork, the template writes ``{"launcher": <pid>,
"server": <pid>}`` to ``models/<model name>`` next to its socket (the launcher's
pid from ``SO_PEERCRED``; the server's again for Java, which watches the server
itself), before answering, and removes it when it
reaps that server: the front finds a model's processes from it without
scanning the process tree (``torch_mme.runtime.processes.recorded``).

Who may ask: the socket lives in a folder only this user can enter (0700,
checked at start), and each connection is checked before anything is forked
(refused with a log line on stderr, the connection closed, the launcher then
takes the slow path): the peer's uid (``SO_PEERCRED``) must be the template's
own, the peer must be a descendant of the process that started the template
(``serve``: MMS's Java and its launchers are), and ``argv[0]`` must resolve to
MMS's own ``model_service_worker.py`` of the installed ``mms`` package. Any
other same-user process used to get any script run with any arguments,
environment and folder.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import stat as stat_module
import struct
import sys
import traceback

from torch_mme.common import read_regular_file
from torch_mme.settings import OMP_NUM_THREADS

MAX_REQUEST = 4 * 2**20
RECEIVE_TIMEOUT_S = 10.0
RECORDS = "models"
"""The folder, next to the socket, of the per-model pid records (``torch_mme.runtime.processes.RECORDS``)."""
STREAMS = "streams"
"""The folder, next to the socket, of the FIFOs a server forked for Java writes its output to."""


def preload() -> None:
    """Everything a model process imports, so children start with it in memory."""
    os.environ.setdefault(OMP_NUM_THREADS, "1")  # what MMS's worker sets before torch loads
    import hmac  # noqa: F401
    import multiprocessing.popen_fork  # noqa: F401  (MMS's server forks its worker with it)
    import secrets  # noqa: F401

    import mms.model_service_worker  # noqa: F401
    import numpy  # noqa: F401
    import numpy.random  # noqa: F401  (children reseed it: imported there, it was private to each, ~1 MB)
    import setproctitle
    import torch  # noqa: F401

    import handler.codecs  # noqa: F401
    import handler.device  # noqa: F401
    import handler.entry  # noqa: F401
    import handler.model  # noqa: F401
    import handler.model_config  # noqa: F401
    import handler.requirements  # noqa: F401
    import torch_mme.runtime.model_server  # noqa: F401

    setproctitle.getproctitle()  # set up now: children rename themselves after os.environ has changed
    warm_up_torchscript()
    gc.collect()
    gc.freeze()


def warm_up_torchscript() -> None:
    """Do TorchScript's once-per-process work here, where every model process inherits it.

    The first call of any scripted model in a process pays for the JIT's lazy set-up (operator tables,
    the profiling executor's passes): about 100 ms, measured as the first invoke of every freshly
    loaded model (bench/results/scale.md), and private memory in each of them. One tiny model saved,
    loaded and run three times through the handler's default request path (decode, predict, encode)
    does it once, before the fork; a model's own first call then costs what its graph costs (a few ms).
    No threads start (one small Linear runs no parallel kernel) and nothing it made is kept.
    """
    import tempfile
    import warnings

    import torch

    from handler import codecs, model

    try:
        with tempfile.TemporaryDirectory(prefix="torch-mme-warm-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())).save(
                os.path.join(folder, "model.pt")
            )
            loaded = model.load(folder, torch.device("cpu"), program="")
            for _ in range(3):
                loaded.encode(loaded.predict(loaded.decode(b"[[0.5, 1, 2, 3]]", codecs.JSON)), codecs.JSON)
    except Exception as exc:  # an optimisation only: models still load, their first call slower
        print(f"torch-mme template: TorchScript warm-up failed: {exc!r}", file=sys.stderr, flush=True)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    header, ancillary, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    try:
        if len(header) != 4 or len(fds) not in (0, 3):
            raise ValueError("malformed request")
        (size,) = struct.unpack("!I", header)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise ValueError("truncated request")
            payload += chunk
        try:
            request = json.loads(payload)
        except RecursionError:  # a request nested thousands deep must not end the template
            raise ValueError("request nested too deeply") from None
        if not fds and not (isinstance(request, dict) and request.get("streams") == "fifo"):
            raise ValueError("no standard streams attached and no FIFOs asked for")
    except BaseException:
        for fd in fds:  # the descriptors it sent are ours now: close them
            os.close(fd)
        raise
    return request, list(fds)


class Refused(Exception):
    """A connection the template does not serve; ``str(self)`` is the reason logged."""


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel (``SO_PEERCRED``)."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def is_descendant(pid: int, ancestor: int) -> bool:
    """True when ``ancestor`` is ``pid`` or one of its ancestors (walking ``/proc/<pid>/stat``)."""
    for _ in range(4096):  # deeper than any real process tree
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat_line = f.read()
        except OSError:
            return False
        pid = int(stat_line[stat_line.rindex(b")") + 2 :].split()[1])  # after "(comm) state": the parent's pid
    return False


def check_private_folder(folder: str) -> None:
    """Refuse to listen in a folder that is a symlink, not this user's, or open to others (mode & 0o077)."""
    info = os.lstat(folder)
    mode = info.st_mode
    if not stat_module.S_ISDIR(mode) or info.st_uid != os.geteuid() or stat_module.S_IMODE(mode) & 0o077:
        raise SystemExit(
            f"torch-mme template: {folder} must be a folder (not a symlink) of uid {os.geteuid()} with mode 0700; "
            f"it has uid {info.st_uid}, mode {stat_module.S_IMODE(info.st_mode):04o}"
        )


def check_peer(peer: tuple[int, int, int], owner: int) -> None:
    """Raise Refused unless the peer runs as this user and descends from ``owner`` (the server)."""
    pid, uid, _ = peer
    if uid != os.geteuid():
        raise Refused(f"the peer runs as uid {uid}, not {os.geteuid()}")
    if not is_descendant(pid, owner):
        raise Refused(f"the peer is not a descendant of the server (pid {owner})")


def check_request(request: object, worker_script: str) -> None:
    """Raise Refused unless the request is to run MMS's worker (``worker_script``)."""
    if not isinstance(request, dict):
        raise Refused("malformed request")
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise Refused("argv is not a list of strings")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise Refused("env is not a mapping of strings")
    if not isinstance(cwd, str):
        raise Refused("cwd is not a string")
    script = os.path.realpath(os.path.join(cwd, argv[0]))
    if script != worker_script:
        raise Refused(f"argv[0] {argv[0]!r} is not MMS's worker {worker_script}")


def mms_worker_script() -> str:
    """The real path of the installed MMS's ``model_service_worker.py``: the one script the template runs."""
    import mms.model_service_worker

    return os.path.realpath(mms.model_service_worker.__file__)


def _become_model_process(request: dict, fds: list[int], streams_dir: str | None = None) -> None:
    """In the forked child: take the launcher's streams, arguments, environment and folder, then run MMS's worker
    (``model_server``: MMS's script's main, from its module, the workers writing to these streams)."""
    import random

    import numpy
    import torch
    from setproctitle import setproctitle

    os.setpgid(0, 0)
    for signo in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [p for p in extra if p not in sys.path]
    argv = request["argv"]
    sys.argv = list(argv)
    setproctitle(" ".join([sys.executable, *argv]))  # MMS's command line: how serve finds a model's processes
    random.seed()
    numpy.random.seed()
    torch.seed()
    from torch_mme.runtime import model_server

    model_server.run(streams_dir)


def _argument(argv: list[str], option: str) -> str | None:
    """The value after ``option`` in MMS's command line, or None."""
    return argv[argv.index(option) + 1] if option in argv[:-1] else None


def model_name(argv: list[str]) -> str | None:
    """The ``--model-name`` MMS passed, when it is one a file may be named after (the front's model names are)."""
    name = _argument(argv, "--model-name")
    if name is None:
        return None
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not name or len(name) > 255 or name[0] in ".-" or not set(name) <= allowed:
        return None
    return name


class _Fifos:
    """The two FIFOs a server forked for Java writes to, named ``<name>-stdout`` and ``<name>-stderr``."""

    def __init__(self, paths: tuple[str, str], keepers: list[int], writers: list[int]) -> None:
        self.paths, self.keepers, self.writers = paths, keepers, writers
        self.name = os.path.basename(paths[0]).removesuffix("-stdout")

    @classmethod
    def make(cls, folder: str) -> _Fifos:
        """Both FIFOs, a keeper (read-write: no open of either end blocks while it is held) and a write end
        for the server for each. The name is random: nothing can guess it before it exists."""
        import secrets

        name = secrets.token_hex(8)
        paths = (os.path.join(folder, f"{name}-stdout"), os.path.join(folder, f"{name}-stderr"))
        keepers: list[int] = []
        writers: list[int] = []
        try:
            for path in paths:
                os.mkfifo(path, 0o600)
                keepers.append(os.open(path, os.O_RDWR))
                writers.append(os.open(path, os.O_WRONLY))
        except OSError:
            for fd in keepers + writers:
                os.close(fd)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        return cls(paths, keepers, writers)

    def release(self) -> None:
        """Remove the FIFOs, then close the keepers: an open by path after this finds no file, never a FIFO
        without a writer to wait on."""
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.remove(path)
        for fd in self.keepers:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.keepers = []


class Template:
    def __init__(self, path: str, owner: int | None = None) -> None:
        self.path = path
        self.owner = os.getppid() if owner is None else owner
        """The process whose descendants may connect: the one that started the template (``serve``)."""
        self.worker_script = mms_worker_script()
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}  # pid -> launcher connection
        self.records_dir = os.path.join(os.path.dirname(os.path.abspath(path)), RECORDS)
        self.records: dict[int, str] = {}  # pid -> its record's path
        self.streams_dir = os.path.join(os.path.dirname(os.path.abspath(path)), STREAMS)
        self.fifos: dict[int, _Fifos] = {}  # pid -> the FIFOs made for it (Java's requests) until Java opened them
        self.tmp_dirs: dict[int, str | None] = {}  # pid -> MMS's --tmp-dir for it (its workers' links)
        self.ending: dict[int, socket.socket] = {}  # reaped before Java opened its FIFOs -> Java's connection
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wakeup_r, self.wakeup_w = os.pipe()

    def serve(self) -> None:
        check_private_folder(os.path.dirname(os.path.abspath(self.path)))
        if os.path.exists(self.path):
            os.remove(self.path)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(64)
        os.makedirs(self.records_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.streams_dir, mode=0o700, exist_ok=True)
        for name in os.listdir(self.streams_dir):  # a template before this one's
            path = os.path.join(self.streams_dir, name)
            with contextlib.suppress(OSError):  # a Java still opening one of them gets a writer, then the end
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            with contextlib.suppress(OSError):
                os.remove(path)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, "signal")
        print(f"torch-mme template ready (pid {os.getpid()}, {self.path})", file=sys.stderr, flush=True)
        while True:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "signal":
                    os.read(self.wakeup_r, 4096)
                    self._reap()
                else:
                    self._peer_spoke(key.fileobj, key.data)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:  # out of descriptors, say: this load fails, the template serves on
            print(f"torch-mme template: cannot accept a connection: {exc}", file=sys.stderr, flush=True)
            return
        peer = (0, -1, -1)
        fds: list[int] = []
        try:
            peer = peer_credentials(conn)
            check_peer(peer, self.owner)
            conn.settimeout(RECEIVE_TIMEOUT_S)  # a peer that sends nothing must not hold up every other load
            request, fds = _receive(conn)
            conn.settimeout(None)
            check_request(request, self.worker_script)
        except (OSError, ValueError, Refused) as exc:
            what = "refused a request" if isinstance(exc, Refused) else "bad request"
            print(f"torch-mme template: {what} from pid {peer[0]} (uid {peer[1]}): {exc}", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        fifos = None
        try:
            if not fds:  # Java's request: the server's output goes to two FIFOs Java opens
                fds = [os.open(os.devnull, os.O_RDONLY)]
                fifos = _Fifos.make(self.streams_dir)
                fds += fifos.writers
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except OSError as exc:  # no FIFOs, or no fork (memory): this load fails, the template serves on
            print(f"torch-mme template: cannot fork for pid {peer[0]}: {exc}", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            if fifos is not None:
                fifos.release()
            conn.close()
            return
        if pid == 0:
            status = 1
            try:
                self._close_inherited(conn)
                if fifos is not None:
                    os.close(fifos.keepers[0])
                    os.close(fifos.keepers[1])
                _become_model_process(request, fds, self.streams_dir)
                status = 0
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also set by the child; whichever runs first, killpg works from here on
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.tmp_dirs[pid] = _argument(request["argv"], "--tmp-dir")
        if fifos is None:
            self._record(request["argv"], peer[0], pid)
            answer = f"pid {pid}\n"
        else:
            self.fifos[pid] = fifos
            self._record(request["argv"], pid, pid)  # Java watches the server itself: no launcher
            answer = f"pid {pid} {fifos.name}\n"
        self.selector.register(conn, selectors.EVENT_READ, pid)
        with contextlib.suppress(OSError):  # a peer gone already: its connection reads as ended next
            conn.sendall(answer.encode())

    def _remove_links(self, pid: int) -> None:
        """The /dev/null links the reaped server's workers made in place of MMS's FIFOs (``model_server``)."""
        from torch_mme.runtime import model_server

        tmp_dir = self.tmp_dirs.pop(pid, None)
        listing = model_server.links_file(self.streams_dir, pid)
        if tmp_dir:
            model_server.remove_links(listing, os.path.realpath(tmp_dir))
        else:
            with contextlib.suppress(OSError):
                os.remove(listing)

    def _release_fifos(self, pid: int) -> None:
        fifos = self.fifos.pop(pid, None)
        if fifos is not None:
            fifos.release()

    def _record(self, argv: list[str], launcher: int, pid: int) -> None:
        """Write the model's pid record (atomically: a reader sees the old one or the new one)."""
        name = model_name(argv)
        if name is None:
            return
        path = os.path.join(self.records_dir, name)
        temporary = os.path.join(self.records_dir, f".{pid}.tmp")
        try:
            with open(temporary, "w") as f:
                json.dump({"launcher": launcher, "server": pid}, f)
            os.replace(temporary, path)
        except OSError as exc:  # the front falls back to scanning for this model
            print(f"torch-mme template: cannot record model {name}'s pids: {exc}", file=sys.stderr, flush=True)
            return
        self.records[pid] = path

    def _forget(self, pid: int) -> None:
        """Remove the record of a reaped server, unless a newer fork of the same model replaced it."""
        path = self.records.pop(pid, None)
        if path is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(read_regular_file(path))["server"] == pid:
                os.remove(path)

    def _close_inherited(self, conn: socket.socket) -> None:
        signal.set_wakeup_fd(-1)
        for sock in [self.listener, conn, *self.children.values(), *self.ending.values()]:
            sock.close()
        for fifos in self.fifos.values():  # other servers' FIFOs that Java has not opened yet: a few at most
            for fd in fifos.keepers:
                os.close(fd)
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        self.selector.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._forget(pid)
            self._remove_links(pid)
            conn = self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            exit_line = f"exit {code if code >= 0 else 128 - code}\n"
            if conn is not None and pid in self.fifos:
                # Java has not opened the server's output yet: it still may, and read why it ended; the FIFOs
                # and the connection stay until it says so or hangs up
                with contextlib.suppress(OSError):
                    conn.sendall(exit_line.encode())
                self.ending[pid] = conn
                continue
            self._release_fifos(pid)
            if conn is not None:
                self._send_and_close(conn, exit_line)

    def _peer_spoke(self, conn: socket.socket, pid: int) -> None:
        """Java opened its FIFOs (``opened``: they go), or the peer is gone: MMS killed the launcher or closed
        Java's connection (unload, timeout), and the model's processes go with it."""
        if self.ending.get(pid) is conn:  # its server was reaped before Java opened its output: now it has
            del self.ending[pid]
            self._release_fifos(pid)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            conn.close()
            return
        if self.children.get(pid) is not conn:  # reaped in this same round of events: closed already
            return
        try:
            if conn.recv(64):
                self._release_fifos(pid)
                return
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()

    def _send_and_close(self, conn: socket.socket, message: str) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(message.encode())
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()


def _raise_descriptor_limit() -> None:
    """The template holds a connection per resident model: the soft limit (often 1,024) raised to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    path = sys.argv[1]
    _raise_descriptor_limit()
    preload()
    Template(path).serve()


if __name__ == "__main__":
    main()
