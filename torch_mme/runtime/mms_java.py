"""torch-mme's fix to MMS's Java frontend: compiled once, found first on MMS's class path.

MMS 1.1.11 throws when a worker's response arrives cut inside a status code or
its header map (java/ModelResponseDecoder.java says why): MMS restarts the
worker and its requests fail with "Worker died.". MMS's class path starts with
"." (Java's working folder), so ``serve`` starts Java in a folder of the run
folder that holds the corrected class, and nothing of MMS is modified.

The class is compiled against the installed MMS jar by the Java compiler that
every JDK and Debian's JRE carry (``java -m jdk.compiler/...``). It is kept in
``<this package>/java/classes-<key>`` when the image is built
(``python -m torch_mme.runtime.mms_java``), else in the user's cache; the key covers
the source and the jar. Without a compiler, serve runs stock MMS and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch_mme import settings
from torch_mme.settings import user_cache_dir

log = logging.getLogger("torch_mme.runtime.mms_java")

PACKAGE_DIR = Path(__file__).resolve().parent / "java"
SOURCE = PACKAGE_DIR / "ModelResponseDecoder.java"
CLASS = Path("com/amazonaws/ml/mms/util/codec/ModelResponseDecoder.class")
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


def _key(jar: Path) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
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
    for place in (PACKAGE_DIR / name, _cache_root() / name):
        if (place / CLASS).is_file():
            return place
    place = (into or _cache_root()) / name
    place.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=place.parent))
    try:
        _compile(java, jar, staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the image's classes from an unprivileged user
        with contextlib.suppress(OSError):  # atomic; fails only when a concurrent server renamed its copy first
            staging.rename(place)
        return place
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _compile(java: str, jar: Path, out: Path) -> None:
    command = [java, *COMPILER_FLAGS, "--release", "11", "-nowarn", "-cp", str(jar), "-d", str(out), str(SOURCE)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"could not run the Java compiler: {exc}") from None
    if done.returncode != 0 or not (out / CLASS).is_file():
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"the Java compiler failed: {reason[0] if reason else done.returncode}")


def working_dir(run_dir: str, java: str | None) -> str | None:
    """A folder of ``run_dir`` to start Java in, holding the corrected classes; None (stock MMS) without them."""
    if java is None:
        return None
    try:
        classes = compiled_classes(java)
    except (OSError, RuntimeError) as exc:
        log.warning(
            "MMS runs with its own response decoder, which drops a worker when a response arrives cut at an "
            "unlucky byte (about 1 request in 10,000 fails with 'Worker died.'): %s",
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
