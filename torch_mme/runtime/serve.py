"""``torch-mme serve``: MMS behind the front, in the foreground, stopped with every process it started.

Start-up reads top to bottom: preflight (Java, the port) -> a private run
folder -> the environment MMS and its workers read -> the front on the public
port (in a thread) -> MMS through sagemaker-inference's ``start_model_server``
in the main thread, which blocks until Java exits.

What the stock ``start_model_server`` gets wrong, and what is done about it:
it writes ``/etc/sagemaker-mms.properties`` (here: the run folder); it finds
"the" MMS by scanning every process (two servers on a machine latch onto each
other; here: the Java whose command line names this run folder's config);
SIGTERM reaches Java only and orphans the Python workers (here: this process
is a child subreaper and stops the whole tree); and a Java that fails to bind
goes unnoticed (here: the front binds the port before MMS starts, MMS listens
on a private Unix socket, and readiness is a real ``/ping``).

And one thing MMS's Java gets wrong: its decoder of worker responses drops the
worker when a response arrives cut at an unlucky byte. Java starts in a folder
with torch-mme's corrected decoder class, which its class path finds first
(``mms_java``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources

import psutil

from torch_mme import settings as env
from torch_mme.runtime import forking, mms_java
from torch_mme.runtime.httpserver import Limits
from torch_mme.settings import Settings, default_deps_dir, search_path

log = logging.getLogger("torch_mme.runtime.serve")

HANDLER_SERVICE = "handler.entry:handle"
MMS_MAIN_CLASS = "com.amazonaws.ml.mms.ModelServer"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0
PR_SET_CHILD_SUBREAPER = 36
JVM_FLAGS = (
    "-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+AlwaysPreTouch "
    "-Dio.netty.allocator.type=unpooled"
)
"""MMS's Java with a fixed, pre-touched heap: its memory stays flat across load/unload cycles.

Measured over 100 cycles (bench/results/memory.md): with the defaults Java's USS
grew +42 MiB (garbage filling a heap that grows to a quarter of RAM); with a
fixed heap, serial GC, C1 only and unpooled netty buffers it stays within 3%.
Each in-flight request holds its body in this heap: raise ``--jvm-heap`` for
large payloads or many concurrent clients. A user's SAGEMAKER_MODEL_SERVER_VMARGS
replaces all of it.
"""


class ServeError(Exception):
    """A reason ``serve`` cannot start; printed as one line, exit status 2."""


def preflight(settings: Settings) -> socket.socket:
    """Fail fast with a clear message; returns the public listening socket (the port is ours from here on)."""
    java = mms_java.java_binary()
    if not java or not os.access(java, os.X_OK):
        raise ServeError(
            "Java is not installed (no `java` on PATH or in JAVA_HOME): MMS needs a Java 11+ runtime, 17 for "
            "torch-mme's changes to it, e.g. `apt-get install -y openjdk-17-jre-headless`"
        )
    if not shutil.which("multi-model-server", path=_search_path()):
        raise ServeError("multi-model-server is not on PATH: install this package into the active environment")
    if not 0 < settings.port < 32768:
        raise ServeError(f"port {settings.port} is out of range: MMS accepts 1-32767")
    if not os.path.isdir(settings.models_root):
        log.warning("models root %s does not exist yet: LoadModel answers 404 until it does", settings.models_root)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} (is another server running?)"
        ) from None
    sock.listen(1024)
    return sock


def _search_path() -> str:
    """PATH with this interpreter's bin folder first: a virtualenv's ``multi-model-server`` is found un-activated."""
    return os.pathsep.join([os.path.dirname(sys.executable), search_path()])


@dataclass(frozen=True)
class RunDir:
    """The run folder of one server, and what ``serve`` may remove from it when it stops."""

    path: str
    created: bool
    """``serve`` made the folder, so it removes it; otherwise only what appeared in it during the run."""
    existing: frozenset[str] = frozenset()
    """Names in a folder that was there already: left alone at exit."""


def claim_run_dir(path: str = "") -> RunDir:
    """A private run folder: a new ``mkdtemp`` one, or ``path`` (TORCH_MME_RUN_DIR), created 0700 if missing.

    The folder holds the template's and MMS's sockets, the launcher MMS runs as
    Python and the load reports, so another user who can write it can run code
    as this server. A ``path`` that exists must be a real folder (not a symlink)
    owned by this user with mode 0700; anything else is a ServeError.
    """
    if not path:
        return RunDir(tempfile.mkdtemp(prefix="torch-mme-"), created=True)  # mkdtemp: 0700, a fresh name
    path = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # checked below
    except OSError as exc:
        raise ServeError(f"cannot create the run folder {path} (TORCH_MME_RUN_DIR): {exc.strerror}") from None
    else:
        os.chmod(path, 0o700)  # whatever the umask
        return RunDir(path, created=True)
    try:
        problem = _not_private(os.lstat(path))
    except OSError as exc:
        raise ServeError(f"cannot use the run folder {path} (TORCH_MME_RUN_DIR): {exc.strerror}") from None
    if problem:
        raise ServeError(
            f"the run folder {path} (TORCH_MME_RUN_DIR) {problem}; it must be a folder of this user with mode 0700 "
            "(or name one that does not exist yet)"
        )
    return RunDir(path, created=False, existing=frozenset(os.listdir(path)))


def _not_private(info: os.stat_result) -> str:
    """What makes an existing run folder unsafe to use ('' when nothing does)."""
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid != os.geteuid():
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    if mode & 0o077:
        return f"has mode {mode:04o}: other users can reach it"
    return ""


def prepare_run_dir(settings: Settings, run_dir: RunDir | None = None) -> Settings:
    """Settings naming the (claimed) run folder, with its ``logs`` folder made."""
    run_dir = run_dir or claim_run_dir(settings.run_dir)
    os.makedirs(os.path.join(run_dir.path, "logs"), exist_ok=True)
    # per-model requirements outlive this run: resolved here, not from the workers' per-run TMPDIR
    return settings.with_overrides(run_dir=run_dir.path, deps_dir=settings.deps_dir or default_deps_dir())


def remove_run_dir(run_dir: RunDir) -> None:
    """Remove what this run made: the whole folder if ``serve`` created it, else only the entries that are new."""
    if run_dir.created:
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for name in os.listdir(run_dir.path):
            if name in run_dir.existing:
                continue
            entry = os.path.join(run_dir.path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(entry)


def limits(settings: Settings) -> Limits:
    """What the public port lets a client hold: the front's bounds, from the settings."""
    return Limits(
        max_body_bytes=settings.max_request_mb * 2**20,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_connections=settings.max_connections,
        receive_budget_bytes=settings.inflight_bytes,
        queue_timeout_s=settings.queue_timeout_s,
        max_queued=settings.max_queued,
    )


def jvm_memory_flags(settings: Settings) -> str:
    """Java's heap and direct memory, sized from the request bytes the front lets into MMS at once.

    Netty holds each body in direct memory while it is read and again while it is written to the
    worker, and MMS copies it to the heap in between; with the default direct memory (the heap's
    size) 48 bodies of 6 MiB made Java fail every request and report itself Unhealthy. Both pools
    get twice the in-flight bound on top of their base (measured: bench/results/reliability.md).
    """
    inflight_mb = settings.inflight_bytes // 2**20
    heap_mb = _megabytes(settings.jvm_heap) + 2 * inflight_mb
    return f"-Xms{heap_mb}m -Xmx{heap_mb}m -XX:MaxDirectMemorySize={64 + 2 * inflight_mb}m"


def _megabytes(size: str) -> int:
    """A JVM size (``128m``, ``1g``, ``524288k``) in MiB."""
    value = size.strip().lower()
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    if value and value[-1] in units:
        return max(1, int(float(value[:-1]) * units[value[-1]]))
    return max(1, int(value) // 2**20)


def mms_environment(settings: Settings) -> dict[str, str]:
    """What MMS, sagemaker-inference and the workers read; a user's own settings are kept."""
    socket_url = "unix:" + os.path.join(settings.run_dir, "mms.sock")
    vmargs = settings.vmargs or JVM_FLAGS
    if "-Xmx" not in vmargs:
        vmargs += " " + jvm_memory_flags(settings)
    return {
        **settings.to_env(),
        env.PATH: _search_path(),
        env.SAGEMAKER_MULTI_MODEL: "true",
        env.SAGEMAKER_HANDLER: HANDLER_SERVICE,
        env.TIMEOUT_VARIABLES[1]: str(settings.timeout_s),  # what sagemaker-inference reads
        env.VMARGS: vmargs,
        env.MMS_INFERENCE_ADDRESS: socket_url,
        env.MMS_MANAGEMENT_ADDRESS: socket_url,
        # pid file, worker sockets and Java's temp files stay in this instance's folder
        env.TEMP: settings.run_dir,
        env.TMPDIR: settings.run_dir,
        env.LOG_LOCATION: os.path.join(settings.run_dir, "logs"),
        env.METRICS_LOCATION: os.path.join(settings.run_dir, "logs"),
        # fewer glibc malloc arenas: native memory of Java and the workers stays compact
        env.MALLOC_ARENA_MAX: env.malloc_arena_max(),
    }


def write_mms_shim(run_dir: str, launcher: str | None, java_dir: str | None) -> str:
    """A ``multi-model-server`` first on PATH (returned): MMS unmodified, with its worker "python" set to the
    template's launcher and Java started in ``java_dir`` (the folder with torch-mme's classes: MMS's class
    path begins with "."; without it Java inherited the caller's working folder)."""
    bin_dir = os.path.join(run_dir, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    # generated, not a copied file: its shebang names this interpreter, its lines this run's launcher and Java folder
    lines = [f"#!{sys.executable}", "import os", "import sys"]
    if launcher:
        lines.append(f"sys.executable = {launcher!r}  # MMS starts each model's process with this")
    lines.append(f"os.chdir({(java_dir or run_dir)!r})  # Java's working folder: the head of its class path")
    lines += ["from mms.model_server import start", "sys.exit(start())", ""]
    forking.write_executable(os.path.join(bin_dir, "multi-model-server"), "\n".join(lines))
    return os.pathsep.join([bin_dir, search_path()])


class Server:
    """One running instance: the front thread, MMS, and the process tree below this process."""

    def __init__(self, settings: Settings, listener: socket.socket, run_dir: RunDir) -> None:
        self.settings = settings
        self.listener = listener
        self.run_dir = run_dir
        self.stopping = threading.Event()
        self.asked_to_stop = threading.Event()
        """Set by SIGTERM/SIGINT only: any other end of MMS is a failure (exit status 1)."""
        self.ready = threading.Event()
        self.failed: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mms: psutil.Process | None = None

    def run(self) -> int:
        _become_subreaper()
        signal.signal(signal.SIGCHLD, _reap_children)
        os.environ.update(mms_environment(self.settings))
        launcher = None
        if self.settings.fork_server:
            launcher, template_env = forking.install(self.settings.run_dir)
            os.environ.update(template_env)
            forking.TemplateSupervisor(template_env[env.TEMPLATE_SOCKET], self.stopping).start()
        java_dir = mms_java.working_dir(self.settings.run_dir, mms_java.java_binary())
        os.environ[env.PATH] = write_mms_shim(self.settings.run_dir, launcher, java_dir)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        threading.Thread(target=self._run_front, name="front", daemon=True).start()
        try:
            self._run_mms()
        except ServeError as exc:
            self.failed = self.failed or str(exc)
        finally:
            self.stop_processes()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
            remove_run_dir(self.run_dir)
        if self.failed and not self.asked_to_stop.is_set():
            log.error("%s", self.failed)
            return 1
        log.info("stopped")
        return 0

    def _run_mms(self) -> None:
        from sagemaker_inference import model_server  # reads SAGEMAKER_MULTI_MODEL at import time

        run_dir = self.settings.run_dir
        model_server.MMS_CONFIG_FILE = os.path.join(run_dir, "mms.properties")
        model_server.DEFAULT_MMS_LOG_FILE = str(resources.files("torch_mme.runtime") / "etc" / "log4j2.xml")
        model_server._retry_retrieve_mms_server_process = self._find_own_mms
        model_server._add_sigterm_handler = lambda process: None  # ours stops the whole tree
        model_server._add_sigchild_handler = lambda: signal.signal(signal.SIGCHLD, _reap_children)
        model_server.start_model_server(handler_service=HANDLER_SERVICE)  # blocks until Java exits
        if not self.asked_to_stop.is_set():
            raise ServeError("MMS's Java exited unexpectedly; stopping (see its log above)")

    def _find_own_mms(self, startup_timeout: int) -> psutil.Process:
        """This instance's Java: a descendant whose command line names this run folder's config."""
        config = os.path.join(self.settings.run_dir, "mms.properties")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping.is_set():
            for process in psutil.Process().children(recursive=True):
                try:
                    cmdline = process.cmdline()
                except psutil.Error:
                    continue
                if MMS_MAIN_CLASS in cmdline and config in cmdline:
                    self._mms = process
                    return process
            time.sleep(0.1)
        raise ServeError("MMS did not start (Java exited or hung); see its log above")

    def _run_front(self) -> None:
        from torch_mme.runtime.front import Front
        from torch_mme.runtime.httpserver import HttpServer
        from torch_mme.runtime.upstream import Upstream

        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        upstream = Upstream(os.path.join(self.settings.run_dir, "mms.sock"))
        try:
            loop.run_until_complete(self._wait_for_mms(upstream))
            if self.stopping.is_set():
                return
            front = Front(self.settings, upstream)
            server = HttpServer(front.handle, limits(self.settings))
            loop.run_until_complete(server.start(self.listener))
            watchdog = loop.create_task(front.watchdog.run(), name="watchdog")
            self.ready.set()
            log.info(
                "ready: serving http://%s:%d (models root %s)",
                self.settings.host,
                self.settings.port,
                self.settings.models_root,
            )
            loop.run_forever()
            watchdog.cancel()
            loop.run_until_complete(server.close())
        except Exception as exc:  # the front is the server: without it, stop everything
            self.failed = f"front failed: {exc}"
            log.exception("front failed")
            self.stopping.set()
            if self._mms is not None:
                _signal(self._mms, signal.SIGTERM)  # run() then stops everything and exits 1
        finally:
            upstream.close()

    async def _wait_for_mms(self, upstream) -> None:
        from torch_mme.runtime.upstream import UpstreamError

        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.stopping.is_set():
            try:
                if (await upstream.request("GET", "/ping", timeout=5)).status == 200:
                    return
            except (UpstreamError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ServeError(f"MMS did not answer /ping within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)

    def _on_signal(self, signo: int, frame: object) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping", signal.Signals(signo).name)
        self.asked_to_stop.set()
        self.stopping.set()
        if self._mms is not None:
            _signal(self._mms, signal.SIGTERM)
        else:
            self.stop_processes()

    def stop_processes(self) -> None:
        """Java first, then every process left below us (orphaned workers are ours: we are their subreaper)."""
        self.stopping.set()
        if self._mms is not None:
            _signal(self._mms, signal.SIGTERM)
            psutil.wait_procs([self._mms], timeout=STOP_GRACE_S)
        leftovers = psutil.Process().children(recursive=True)
        for process in leftovers:
            _signal(process, signal.SIGTERM)
        _, alive = psutil.wait_procs(leftovers, timeout=STOP_GRACE_S)
        for process in alive:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=STOP_GRACE_S)


def _signal(process: psutil.Process, signo: int) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(signo)


def _reap_children(signo: int, frame: object) -> None:
    """Collect exited children (MMS's launcher script; orphans we inherit as subreaper) without blocking."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _become_subreaper() -> None:
    """Orphans of our descendants (MMS's workers when Java dies) become our children, so we can stop them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("could not become a child subreaper; workers orphaned by Java may outlive the server")


def serve(settings: Settings) -> int:
    try:
        listener = preflight(settings)
    except ServeError as exc:
        print(f"torch-mme serve: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = claim_run_dir(settings.run_dir)
    except ServeError as exc:
        listener.close()
        print(f"torch-mme serve: {exc}", file=sys.stderr)
        return 2
    return Server(prepare_run_dir(settings, run_dir), listener, run_dir).run()
