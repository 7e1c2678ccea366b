"""The one place that reads the environment.

``Settings`` holds what the container can be told, each field declared once
with its variable(s), its ``serve`` flag and what it does: ``from_env`` reads
them, ``to_env`` writes them for the worker processes (``torch-mme serve``
exports the settings, each MMS worker reads them back, so both sides agree),
the CLI's help and the README's settings table are made from them
(``python -m torch_mme.settings`` prints the table; a unit test checks the
README holds it). SageMaker's own variables come first; the project's use the
``TORCH_MME_`` prefix.

Below ``Settings``, the other variables anything here reads (``JAVA_HOME``,
the AWS endpoint for the model store, ...), each named once with its default;
and the names of variables written for MMS and its workers, never read here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

TRUE = {"1", "true", "yes", "on"}
EVICTION_MODES = ("sagemaker", "lru")


def _eviction(value: str) -> str:
    mode = value.strip().lower()
    if mode not in EVICTION_MODES:
        raise ValueError(f"TORCH_MME_EVICTION must be one of {EVICTION_MODES}, not {value!r}")
    return mode


def _setting(
    default: Any,
    env: str | tuple[str, ...],
    doc: str,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """A field of ``Settings``: ``env`` is its variable (several: the first set wins, ``to_env`` writes the
    first), ``flag`` its ``torch-mme serve`` option, ``parse`` how a value is read (else by the field's type),
    ``shown`` its default as the README and ``--help`` say it, when that is not the value itself."""
    names = (env,) if isinstance(env, str) else env
    return field(default=default, metadata={"env": names, "doc": doc, "flag": flag, "parse": parse, "shown": shown})


# --- variables read besides the settings ---------------------------------------------------------------

SAGEMAKER_BASE_DIR = "SAGEMAKER_BASE_DIR"
"""SageMaker's base folder (default ``/opt/ml``): the models root is ``$SAGEMAKER_BASE_DIR/models`` unless
``TORCH_MME_MODEL_DIR`` says."""
DEFAULT_BASE_DIR = "/opt/ml"


TIMEOUT_VARIABLES = (
    "TORCH_MME_TIMEOUT_SECONDS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
)
"""The response timeout's variables, the first set wins; serve also writes the second, which sagemaker-inference
reads (MMS reads the third as minutes; SageMaker's documentation says seconds, and every one is seconds here)."""
VMARGS = "SAGEMAKER_MODEL_SERVER_VMARGS"
"""MMS's JVM flags: the user's, read into ``Settings.vmargs``; serve writes the flags it runs Java with."""


def _models_root(env: Mapping[str, str]) -> str:
    return os.path.join(env.get(SAGEMAKER_BASE_DIR) or DEFAULT_BASE_DIR, "models")


@dataclass(frozen=True)
class Settings:
    """Everything the container can be told, with its default."""

    host: str = _setting(
        "127.0.0.1",
        "TORCH_MME_HOST",
        "address the public API binds to (the image sets 0.0.0.0)",
        "--host",
    )
    port: int = _setting(8080, "SAGEMAKER_BIND_TO_PORT", "the public port (MMS accepts 1-32767)", "--port")
    models_root: str = _setting(
        "/opt/ml/models",
        "TORCH_MME_MODEL_DIR",
        "the models root, else $SAGEMAKER_BASE_DIR/models; LoadModel refuses a url outside it",
        "--model-dir",
    )
    workers_per_model: int = _setting(
        1,
        "SAGEMAKER_MODEL_SERVER_WORKERS",
        "worker processes per model (a model's torch-mme.json may say)",
        "--workers",
    )
    timeout_s: int = _setting(
        60,
        TIMEOUT_VARIABLES,
        "response timeout of one request, in seconds (all three variables are read as seconds)",
        "--timeout",
    )
    jvm_heap: str = _setting(
        "128m",
        "TORCH_MME_JVM_HEAP",
        "the base of MMS's Java heap, fixed and pre-touched so its memory stays flat; serve adds twice the in-flight "
        "bound (TORCH_MME_INFLIGHT_MB) to it and sets Java's direct memory to 64 MiB plus twice that bound, since "
        "Java holds every request body in flight there (heap 176 MiB, direct 112 MiB with the defaults)",
        "--jvm-heap",
    )
    vmargs: str = _setting("", VMARGS, "MMS's JVM flags; one with an -Xmx replaces all of serve's JVM flags")
    max_request_mb: int = _setting(
        6, "SAGEMAKER_MAX_PAYLOAD_IN_MB", "largest request body in MiB; a larger one is 413", "--max-request-mb"
    )
    max_decoded_ratio: int = _setting(
        16,
        "TORCH_MME_MAX_DECODED_RATIO",
        "the default decoders (JSON, CSV, .npy, .npz) refuse with 413 a body whose arrays would take more than this "
        "many times the body limit, checked from declared sizes before anything is allocated or decompressed",
    )
    default_accept: str = _setting(
        "application/json",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
        "encoding of a result when Accept is missing or `*/*`",
    )
    allow_unsafe_pickle: bool = _setting(
        False,
        "TORCH_MME_ALLOW_UNSAFE_PICKLE",
        "load pickled whole modules with weights_only=False: it runs the pickle's code",
        "--allow-unsafe-pickle",
    )
    run_dir: str = _setting(
        "",
        "TORCH_MME_RUN_DIR",
        "private folder of one server (MMS's config and socket, load reports): a 0700 folder of this user, "
        "or created so ('': a new one under $TMPDIR)",
    )
    log_level: str = _setting("INFO", "TORCH_MME_LOG_LEVEL", "DEBUG, INFO, WARNING", "--log-level", str.upper)
    memory_budget_mb: int = _setting(
        0,
        "TORCH_MME_MEMORY_BUDGET_MB",
        "cap on the memory the container may use (0: the cgroup limit or the host's memory)",
        "--memory-budget-mb",
    )
    memory_headroom_mb: int = _setting(
        256,
        "TORCH_MME_MEMORY_HEADROOM_MB",
        "memory kept free: a load that would leave less is 507",
        "--memory-headroom-mb",
    )
    worker_overhead_mb: int = _setting(
        0,
        "TORCH_MME_WORKER_OVERHEAD_MB",
        "what one model's processes cost before any weights, in every estimate (0: 40 MB forked from the template, "
        "160 MB for a fresh Python)",
    )
    fork_server: bool = _setting(
        True,
        "TORCH_MME_FORK_SERVER",
        "model processes fork from a template with torch imported (fast cold start, shared memory); false: a fresh "
        "Python each",
    )
    eviction: str = _setting(
        "sagemaker",
        "TORCH_MME_EVICTION",
        "sagemaker: answer 507 and let the platform unload; lru: unload least-recently-used idle models to make room, "
        "for running outside SageMaker",
        "--evict",
        _eviction,
    )
    install_requirements: bool = _setting(
        True, "TORCH_MME_INSTALL_REQUIREMENTS", "install a model's code/requirements.txt when it loads"
    )
    deps_dir: str = _setting(
        "",
        "TORCH_MME_DEPS_DIR",
        "folder of the per-model dependency folders ('': ~/.cache/torch-mme/deps, which serve exports)",
    )
    wheelhouse: str = _setting(
        "", "TORCH_MME_WHEELHOUSE", "a folder of wheels for every model, tried with its code/wheels before any index"
    )
    pip_index: str = _setting(
        "",
        "TORCH_MME_PIP_INDEX",
        "'': pip's own configuration; off: never an index; else the index URL",
        parse=str.strip,
    )
    pip_timeout_s: int = _setting(
        600, "TORCH_MME_PIP_TIMEOUT_S", "longest a model's pip install may take (the load's timeout bounds it too)"
    )
    header_timeout_s: float = _setting(
        10.0, "TORCH_MME_HEADER_TIMEOUT_S", "a request's head must arrive within this many seconds, else 408"
    )
    body_timeout_s: float = _setting(
        30.0, "TORCH_MME_BODY_TIMEOUT_S", "a request's body must arrive within this many seconds of its head, else 408"
    )
    idle_timeout_s: float = _setting(
        75.0, "TORCH_MME_IDLE_TIMEOUT_S", "an idle keep-alive connection is closed after this many seconds"
    )
    max_connections: int = _setting(
        1024, "TORCH_MME_MAX_CONNECTIONS", "open client connections at most; one more is 503 and closed"
    )
    inflight_mb: int = _setting(
        0,
        "TORCH_MME_INFLIGHT_MB",
        "request bytes being received, and request bytes in MMS, at once (0: 4 x the body limit); Java's memory is "
        "sized from it, and a request beyond it waits its turn",
    )
    max_queued: int = _setting(
        256, "TORCH_MME_MAX_QUEUED", "requests waiting for room at once; one more is 503 with Retry-After"
    )
    metrics: bool = _setting(True, "TORCH_MME_METRICS", "per-model Prometheus metrics at GET /metrics")
    queue_timeout_s: float = _setting(
        10.0, "TORCH_MME_QUEUE_TIMEOUT_S", "longest a request waits for room before it is 503 with Retry-After"
    )
    program: str = _setting(
        "inference.py",
        "SAGEMAKER_PROGRAM",
        "the user script in each model's code/ (what the SDK's entry_point= sets; mnist_1d.py or mnist_1d); a model "
        "without that file uses inference.py",
        parse=str.strip,
    )

    @property
    def inflight_bytes(self) -> int:
        return (self.inflight_mb or 4 * self.max_request_mb) * 2**20

    @property
    def max_decoded_bytes(self) -> int:
        """The most bytes the arrays decoded from one request body may take."""
        return self.max_request_mb * 2**20 * self.max_decoded_ratio

    @property
    def model_overhead_mb(self) -> int:
        if self.worker_overhead_mb:
            return self.worker_overhead_mb
        return 40 if self.fork_server else 160

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings ``env`` (``os.environ``) gives; a variable that is unset or empty leaves the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = next((env[name] for name in f.metadata["env"] if env.get(name)), None)
            if raw is not None:
                values[f.name] = _parse(f, raw)
        if "models_root" not in values:
            values["models_root"] = _models_root(env)
        return cls(**values)

    def with_overrides(self, **overrides: object) -> Settings:
        """Settings with the given fields replaced; ``None`` values are ignored (unset CLI flags)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` in a worker process rebuild these settings."""
        return {f.metadata["env"][0]: _format(getattr(self, f.name)) for f in fields(self)}


def _parse(f: Field, raw: str) -> Any:
    parse = f.metadata["parse"]
    if parse is not None:
        return parse(raw)
    if f.type in ("bool", bool):
        return raw.lower() in TRUE
    if f.type in ("int", int):
        return int(raw)
    if f.type in ("float", float):
        return float(raw)
    return raw


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def setting_fields() -> tuple[Field, ...]:
    """``Settings``' fields, each with its ``metadata``: ``env`` (names), ``doc``, ``flag``."""
    return fields(Settings)


def shown_default(f: Field) -> str:
    """A field's default as the README and ``--help`` say it."""
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    return _format(f.default) if f.default != "" else "''"


def readme_table() -> str:
    """The README's table of every setting (``python -m torch_mme.settings`` prints it)."""
    rows = ["| variable | `serve` flag | default | what |", "|---|---|---|---|"]
    for f in setting_fields():
        names = ", ".join(f"`{name}`" for name in f.metadata["env"])
        flag = f"`{f.metadata['flag']}`" if f.metadata["flag"] else ""
        rows.append(f"| {names} | {flag} | `{shown_default(f)}` | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


# --- the environment's other variables: read only here ----------------------------------------------------


def user_cache_dir(env: Mapping[str, str] | None = None) -> str:
    """This project's folder in the user's cache: ``$XDG_CACHE_HOME/torch-mme`` (``~/.cache/torch-mme``)."""
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "torch-mme")


def default_deps_dir(env: Mapping[str, str] | None = None) -> str:
    """Where per-model requirements are installed unless TORCH_MME_DEPS_DIR says: the user's cache.

    ``$XDG_CACHE_HOME/torch-mme/deps`` (``~/.cache/torch-mme/deps``): it outlives a model's
    reload and a server run, and is shared by every model process of that user. ``serve``
    resolves it once and exports it (its workers run with a per-run TMPDIR).
    """
    return os.path.join(user_cache_dir(env), "deps")


def search_path() -> str:
    """``PATH`` (``os.defpath`` when unset): where ``serve`` finds MMS and the shims it puts first."""
    return os.environ.get(PATH) or os.defpath


def java_home() -> str:
    """``JAVA_HOME`` ('' when unset): MMS runs ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    return os.environ.get("JAVA_HOME", "")


def malloc_arena_max() -> str:
    """``MALLOC_ARENA_MAX`` for MMS and its workers: the user's, else 2 (fewer glibc arenas, compact native
    memory)."""
    return os.environ.get(MALLOC_ARENA_MAX) or "2"


def aws_region() -> str:
    """The model store's S3 region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION`` ('': boto3's session decides)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""


def aws_s3_endpoint() -> str:
    """An S3-compatible server for the model store: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    ('': AWS's own)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def container_scratch() -> str:
    """Where the container tier keeps its wheelhouse and build context: ``TORCH_MME_CONTAINER_SCRATCH``
    (default ``/var/tmp/torch-mme-container``)."""
    return os.environ.get("TORCH_MME_CONTAINER_SCRATCH") or "/var/tmp/torch-mme-container"


def timeout_is_set() -> bool:
    """Whether the user set the response timeout (any of its variables): the demo keeps theirs."""
    return any(os.environ.get(name) for name in TIMEOUT_VARIABLES)


def environment() -> dict[str, str]:
    """A copy of this process's whole environment, for a child that runs with it plus its own settings."""
    return dict(os.environ)


# --- variables written for MMS, sagemaker-inference and the model processes (names only) --------------------

PATH = "PATH"
MALLOC_ARENA_MAX = "MALLOC_ARENA_MAX"
OMP_NUM_THREADS = "OMP_NUM_THREADS"
"""Set to 1 in the template before torch loads, as MMS's worker does."""
TEMPLATE_SOCKET = "TORCH_MME_TEMPLATE_SOCKET"
"""The template's socket, for the launcher (which reads it itself: it imports only built-in modules, and
``launcher.SOCKET_ENV`` is this name)."""
SAGEMAKER_MULTI_MODEL = "SAGEMAKER_MULTI_MODEL"
SAGEMAKER_HANDLER = "SAGEMAKER_HANDLER"
MMS_INFERENCE_ADDRESS = "MMS_INFERENCE_ADDRESS"
MMS_MANAGEMENT_ADDRESS = "MMS_MANAGEMENT_ADDRESS"
TEMP = "TEMP"
TMPDIR = "TMPDIR"
LOG_LOCATION = "LOG_LOCATION"
METRICS_LOCATION = "METRICS_LOCATION"


if __name__ == "__main__":
    print(readme_table(), end="")
