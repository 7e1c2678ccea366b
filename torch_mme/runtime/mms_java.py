"""torch-mme's changes to MMS's Java frontend: compiled once, found first on MMS's class path.

Each ``java/*.java`` replaces the MMS 1.1.11 class of its name (its javadoc says why), or is new:

- ``ModelResponseDecoder``: MMS throws when a worker's response arrives cut inside a status code or its
  header map, restarts the worker, and its requests fail with "Worker died.";
- ``Model``: ``pollBatch`` sends a request at once, without waiting ``maxBatchDelay`` to fill a batch, when
  the front marked it alone for its model (``handler/alone.py``) and nothing is queued behind it;
- ``WorkerLifeCycle`` with the new ``TemplateProcess``: a model's server is asked of the template directly
  rather than started with ``Runtime.exec``, whose cost grows with every descriptor Java holds (a few per
  resident model).

They are compiled for Java 17 (``TemplateProcess`` uses Unix-domain socket channels, Java 16+).

MMS's class path starts with "." (Java's working folder), so ``serve`` starts Java in a folder of the run
folder that holds the compiled classes, and nothing of MMS is modified.

The classes are compiled against the installed MMS jar by the Java compiler that
every JDK and Debian's JRE carry (``java -m jdk.compiler/...``). They are kept in
``<this package>/java/classes-<key>`` when the image is built
(``python -m torch_mme.runtime.mms_java``), else in the user's cache; the key covers
every source and the jar. Without a compiler, serve runs stock MMS and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch_mme import settings
from torch_mme.settings import user_cache_dir

log = logging.getLogger("torch_mme.runtime.mms_java")

PACKAGE_DIR = Path(__file__).resolve().parent / "java"
CLASS = Path("com/amazonaws/ml/mms/util/codec/ModelResponseDecoder.class")
"""The corrected response decoder's class file (relative to a classes folder)."""
MODEL_CLASS = Path("com/amazonaws/ml/mms/wlm/Model.class")
"""The class whose ``pollBatch`` does not hold a request alone for its model."""
LIFECYCLE_CLASSES = (
    Path("com/amazonaws/ml/mms/wlm/TemplateProcess.class"),
    Path("com/amazonaws/ml/mms/wlm/WorkerLifeCycle.class"),
)
"""The classes that ask the template for a model's server rather than starting a process."""
COMPILE_TIMEOUT_S = 120
COMPILER_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-m", "jdk.compiler/com.sun.tools.javac.Main"]


def java_binary() -> str | None:
    """The Java MMS will run: ``$JAVA_HOME/bin/java``, else ``java`` on PATH (MMS's own rule)."""
    if settings.java_home():
        return os.path.join(settings.java_home(), "bin", "java")
    return shutil.which("java")


def mms_jar() -> Path:
    spec = importlib.util.find_spec("mms")  # found, not imported
    if spec is None or spec.origin is None:
        raise FileNotFoundError("multi-model-server is not installed")
    return Path(spec.origin).parent / "frontend" / "model-server.jar"


def sources() -> list[Path]:
    """Every ``.java`` of the package's ``java`` folder, by name."""
    return sorted(PACKAGE_DIR.glob("*.java"))


def class_file(source: Path) -> Path:
    """The class file ``source`` compiles to: its ``package`` as folders, its file name with ``.class``."""
    found = re.search(r"^package\s+([\w.]+)\s*;", source.read_text(encoding="utf-8"), re.MULTILINE)
    folder = Path(*found.group(1).split(".")) if found else Path()
    return folder / f"{source.stem}.class"


def _key(jar: Path) -> str:
    digest = hashlib.sha256()
    for source in sources():
        digest.update(source.name.encode() + b"\0" + hashlib.sha256(source.read_bytes()).digest())
    with open(jar, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _cache_root() -> Path:
    return Path(user_cache_dir()) / "java"


def compiled_classes(java: str, into: Path | None = None) -> Path:
    """A folder with the compiled classes: the image's, the cache's, or compiled now into ``into`` (default: the
    user's cache). Raises ``RuntimeError`` or ``OSError``."""
    jar = mms_jar()
    name = f"classes-{_key(jar)}"
    expected = [class_file(source) for source in sources()]
    for place in (PACKAGE_DIR / name, _cache_root() / name):
        if all((place / path).is_file() for path in expected):
            return place
    place = (into or _cache_root()) / name
    place.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=place.parent))
    try:
        _compile(java, jar, staging, expected)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the image's classes from an unprivileged user
        with contextlib.suppress(OSError):  # atomic; fails only when a concurrent server renamed its copy first
            staging.rename(place)
        return place
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _compile(java: str, jar: Path, out: Path, expected: list[Path]) -> None:
    command = [java, *COMPILER_FLAGS, "--release", "17", "-nowarn", "-cp", str(jar), "-d", str(out)]
    command += [str(source) for source in sources()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"could not run the Java compiler: {exc}") from None
    if done.returncode != 0 or not all((out / path).is_file() for path in expected):
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"the Java compiler failed: {reason[0] if reason else done.returncode}")


def working_dir(run_dir: str, java: str | None) -> str | None:
    """A folder of ``run_dir`` to start Java in, holding the compiled classes; None (stock MMS) without them."""
    if java is None:
        return None
    try:
        classes = compiled_classes(java)
    except (OSError, RuntimeError) as exc:
        log.warning(
            "MMS runs with its own response decoder, which drops a worker when a response arrives cut at an "
            "unlucky byte (about 1 request in 10,000 fails with 'Worker died.'), its own batching, which "
            "holds a request alone for its model for max_batch_delay_ms, and starts a process for every "
            "model it loads, slower as more are loaded (torch-mme's classes need Java 17): %s",
            exc,
        )
        return None
    target = os.path.join(run_dir, "java")
    shutil.copytree(classes, target, dirs_exist_ok=True)  # MMS's "." is this run's own copy, a few kB
    return target


def main() -> int:
    """Compile the classes into this package (the image build runs this, so containers start without compiling)."""
    java = java_binary()
    if java is None:
        print("no Java found (JAVA_HOME or java on PATH)", file=sys.stderr)
        return 1
    try:
        print(compiled_classes(java, into=PACKAGE_DIR))
    except (OSError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
