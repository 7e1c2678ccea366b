"""The one place that reads the environment.

Container-side settings shared by ``torch-mme serve`` (which exports them) and
the MMS workers (which read them back), so both sides agree. SageMaker's own
variables come first; the project's use the ``TORCH_MME_`` prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

TRUE = {"1", "true", "yes", "on"}


def _models_root(env: Mapping[str, str]) -> str:
    if env.get("TORCH_MME_MODEL_DIR"):
        return env["TORCH_MME_MODEL_DIR"]
    return os.path.join(env.get("SAGEMAKER_BASE_DIR", "/opt/ml"), "models")


def _timeout_seconds(env: Mapping[str, str]) -> int:
    # MMS reads SAGEMAKER_MODEL_SERVER_TIMEOUT as minutes; SageMaker's documentation
    # describes it in seconds. We take every timeout in seconds, as documented.
    for name in (
        "TORCH_MME_TIMEOUT_SECONDS",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    ):
        if env.get(name):
            return int(env[name])
    return 60


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


EVICTION_MODES = ("sagemaker", "lru")


def _eviction(value: str) -> str:
    mode = value.strip().lower()
    if mode not in EVICTION_MODES:
        raise ValueError(f"TORCH_MME_EVICTION must be one of {EVICTION_MODES}, not {value!r}")
    return mode


@dataclass(frozen=True)
class Settings:
    """Everything the container can be told, with its default."""

    host: str = "127.0.0.1"
    """Address the public API binds to (the container image sets 0.0.0.0)."""
    port: int = 8080
    """Public port (``SAGEMAKER_BIND_TO_PORT``); MMS refuses ports above 32767."""
    models_root: str = "/opt/ml/models"
    """LoadModel refuses a ``url`` outside this folder."""
    workers_per_model: int = 1
    timeout_s: int = 60
    """Response timeout of one request, in seconds."""
    jvm_heap: str = "128m"
    """The MMS Java heap (fixed: ``-Xms`` = ``-Xmx``) unless SAGEMAKER_MODEL_SERVER_VMARGS sets one."""
    vmargs: str = ""
    max_request_mb: int = 6
    """Largest request body accepted, in MiB (``SAGEMAKER_MAX_PAYLOAD_IN_MB``)."""
    max_decoded_ratio: int = 16
    """The default decoders (JSON, CSV, ``.npy``, ``.npz``) refuse with 413 a body whose arrays would take more than
    this many times ``max_request_mb`` (``TORCH_MME_MAX_DECODED_RATIO``), checked from declared sizes before
    anything is allocated or decompressed: an ``.npz`` of zeros would otherwise expand a thousandfold."""
    default_accept: str = "application/json"
    """Encoding of a result when Accept is missing or ``*/*``."""
    allow_unsafe_pickle: bool = False
    """Allow ``torch.load(weights_only=False)`` for pickled whole modules: it runs the pickle's code."""
    run_dir: str = ""
    """Private folder of one server instance (MMS config, socket, pid file, load reports)."""
    log_level: str = "INFO"
    memory_budget_mb: int = 0
    """Cap on the memory the container believes it has (0: the cgroup limit or the host's memory)."""
    memory_headroom_mb: int = 256
    """Memory kept free: a load that would leave less answers 507."""
    worker_overhead_mb: int = 0
    """Memory one model's processes cost before any weights, counted in every estimate (0: measured defaults,
    40 MB forked from the template, 160 MB for a fresh Python that imports torch itself)."""
    fork_server: bool = True
    """Start model processes by forking a template that has torch imported (fast cold start, shared memory)."""
    eviction: str = "sagemaker"
    """``sagemaker``: answer 507 and let the platform unload. ``lru``: unload least-recently-used models first."""
    install_requirements: bool = True
    """Install a model's ``code/requirements.txt`` when it loads (``TORCH_MME_INSTALL_REQUIREMENTS``)."""
    deps_dir: str = ""
    """Folder of the per-model dependency folders ('': ``default_deps_dir()``, which ``serve`` exports)."""
    wheelhouse: str = ""
    """A folder of wheels for every model, searched with the model's ``code/wheels`` before any index."""
    pip_index: str = ""
    """'': pip's own configuration; ``off``: never use an index; else the index URL to use."""
    pip_timeout_s: int = 600
    """Longest a model's pip install may take (also bounded by the load's own timeout, ``timeout_s``)."""
    header_timeout_s: float = 10.0
    """A client must send a request's head (line and headers) within this many seconds, else 408."""
    body_timeout_s: float = 30.0
    """A client must send a request's body within this many seconds of its head, else 408."""
    idle_timeout_s: float = 75.0
    """An idle keep-alive connection is closed after this many seconds."""
    max_connections: int = 1024
    """Open client connections at most; one more is answered 503 and closed."""
    inflight_mb: int = 0
    """Request bytes in MMS at once (0: four times ``max_request_mb``); Java's heap and direct memory are sized
    from it. A request beyond it waits its turn (first come, first served)."""
    max_queued: int = 256
    """Requests waiting for room at once; one more is answered 503 with ``Retry-After`` at once."""
    metrics: bool = True
    """Per-model Prometheus metrics at ``GET /metrics`` (``TORCH_MME_METRICS``)."""
    queue_timeout_s: float = 10.0
    """Longest a request waits for room before it is answered 503 with ``Retry-After``."""

    @property
    def inflight_bytes(self) -> int:
        return (self.inflight_mb or 4 * self.max_request_mb) * 2**20

    program: str = "inference.py"
    """The user script in each model's ``code/`` (``SAGEMAKER_PROGRAM``, what the SDK's ``entry_point=`` sets):
    ``mnist_1d.py`` or a module name ``mnist_1d``; a model without that file falls back to ``inference.py``."""

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
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(
            host=env.get("TORCH_MME_HOST", cls.host),
            port=int(env.get("SAGEMAKER_BIND_TO_PORT", cls.port)),
            models_root=_models_root(env),
            workers_per_model=int(env.get("SAGEMAKER_MODEL_SERVER_WORKERS") or cls.workers_per_model),
            timeout_s=_timeout_seconds(env),
            jvm_heap=env.get("TORCH_MME_JVM_HEAP", cls.jvm_heap),
            vmargs=env.get("SAGEMAKER_MODEL_SERVER_VMARGS", ""),
            max_request_mb=int(env.get("SAGEMAKER_MAX_PAYLOAD_IN_MB") or cls.max_request_mb),
            max_decoded_ratio=int(env.get("TORCH_MME_MAX_DECODED_RATIO") or cls.max_decoded_ratio),
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", cls.default_accept),
            allow_unsafe_pickle=env.get("TORCH_MME_ALLOW_UNSAFE_PICKLE", "").lower() in TRUE,
            run_dir=env.get("TORCH_MME_RUN_DIR", ""),
            log_level=env.get("TORCH_MME_LOG_LEVEL", cls.log_level).upper(),
            memory_budget_mb=int(env.get("TORCH_MME_MEMORY_BUDGET_MB") or cls.memory_budget_mb),
            memory_headroom_mb=int(env.get("TORCH_MME_MEMORY_HEADROOM_MB") or cls.memory_headroom_mb),
            worker_overhead_mb=int(env.get("TORCH_MME_WORKER_OVERHEAD_MB") or cls.worker_overhead_mb),
            fork_server=env.get("TORCH_MME_FORK_SERVER", "true").lower() in TRUE,
            eviction=_eviction(env.get("TORCH_MME_EVICTION", cls.eviction)),
            install_requirements=(env.get("TORCH_MME_INSTALL_REQUIREMENTS") or "true").lower() in TRUE,
            deps_dir=env.get("TORCH_MME_DEPS_DIR", cls.deps_dir),
            wheelhouse=env.get("TORCH_MME_WHEELHOUSE", cls.wheelhouse),
            pip_index=env.get("TORCH_MME_PIP_INDEX", cls.pip_index).strip(),
            pip_timeout_s=int(env.get("TORCH_MME_PIP_TIMEOUT_S") or cls.pip_timeout_s),
            header_timeout_s=float(env.get("TORCH_MME_HEADER_TIMEOUT_S") or cls.header_timeout_s),
            body_timeout_s=float(env.get("TORCH_MME_BODY_TIMEOUT_S") or cls.body_timeout_s),
            idle_timeout_s=float(env.get("TORCH_MME_IDLE_TIMEOUT_S") or cls.idle_timeout_s),
            max_connections=int(env.get("TORCH_MME_MAX_CONNECTIONS") or cls.max_connections),
            inflight_mb=int(env.get("TORCH_MME_INFLIGHT_MB") or cls.inflight_mb),
            max_queued=int(env.get("TORCH_MME_MAX_QUEUED") or cls.max_queued),
            queue_timeout_s=float(env.get("TORCH_MME_QUEUE_TIMEOUT_S") or cls.queue_timeout_s),
            metrics=(env.get("TORCH_MME_METRICS") or "true").lower() in TRUE,
            program=(env.get("SAGEMAKER_PROGRAM") or cls.program).strip(),
        )

    def with_overrides(self, **overrides: object) -> "Settings":
        """Settings with the given fields replaced; ``None`` values are ignored (unset CLI flags)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` in a worker process rebuild these settings."""
        return {
            "TORCH_MME_HOST": self.host,
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "TORCH_MME_MODEL_DIR": self.models_root,
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(self.workers_per_model),
            "TORCH_MME_TIMEOUT_SECONDS": str(self.timeout_s),
            "TORCH_MME_JVM_HEAP": self.jvm_heap,
            "SAGEMAKER_MODEL_SERVER_VMARGS": self.vmargs,
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_request_mb),
            "TORCH_MME_MAX_DECODED_RATIO": str(self.max_decoded_ratio),
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": self.default_accept,
            "TORCH_MME_ALLOW_UNSAFE_PICKLE": "true" if self.allow_unsafe_pickle else "false",
            "TORCH_MME_RUN_DIR": self.run_dir,
            "TORCH_MME_LOG_LEVEL": self.log_level,
            "TORCH_MME_MEMORY_BUDGET_MB": str(self.memory_budget_mb),
            "TORCH_MME_MEMORY_HEADROOM_MB": str(self.memory_headroom_mb),
            "TORCH_MME_WORKER_OVERHEAD_MB": str(self.worker_overhead_mb),
            "TORCH_MME_FORK_SERVER": "true" if self.fork_server else "false",
            "TORCH_MME_EVICTION": self.eviction,
            "TORCH_MME_INSTALL_REQUIREMENTS": "true" if self.install_requirements else "false",
            "TORCH_MME_DEPS_DIR": self.deps_dir,
            "TORCH_MME_WHEELHOUSE": self.wheelhouse,
            "TORCH_MME_PIP_INDEX": self.pip_index,
            "TORCH_MME_PIP_TIMEOUT_S": str(self.pip_timeout_s),
            "TORCH_MME_HEADER_TIMEOUT_S": str(self.header_timeout_s),
            "TORCH_MME_BODY_TIMEOUT_S": str(self.body_timeout_s),
            "TORCH_MME_IDLE_TIMEOUT_S": str(self.idle_timeout_s),
            "TORCH_MME_MAX_CONNECTIONS": str(self.max_connections),
            "TORCH_MME_INFLIGHT_MB": str(self.inflight_mb),
            "TORCH_MME_MAX_QUEUED": str(self.max_queued),
            "TORCH_MME_QUEUE_TIMEOUT_S": str(self.queue_timeout_s),
            "TORCH_MME_METRICS": "true" if self.metrics else "false",
            "SAGEMAKER_PROGRAM": self.program,
        }
