"""The Java checks in tests/java: torch-mme's MMS classes compiled once, and one check program compiled against
MMS's jar, for the tests that run that program with either class path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from torch_mme.runtime import mms_java

CHECKS = Path(__file__).resolve().parents[1] / "java"


def compile_check(tmp_path_factory: pytest.TempPathFactory, source: str, with_ours: bool = False) -> dict[str, Path]:
    """``java`` (the binary), ``ours`` (torch-mme's compiled classes), ``check`` (the folder holding the compiled
    ``tests/java/<source>``, compiled against MMS's jar, and ours too when ``with_ours``) and ``jar`` (MMS's)."""
    java = mms_java.java_binary()
    assert java, "these tests need Java (the integration tiers do too): apt-get install openjdk-17-jre-headless"
    ours = mms_java.compiled_classes(java, into=tmp_path_factory.mktemp("mms-java"))
    check = tmp_path_factory.mktemp("check")
    jar = mms_java.mms_jar()
    subprocess.run(
        [
            *(java, *mms_java.COMPILER_FLAGS, "-nowarn", "-cp", f"{ours}:{jar}" if with_ours else str(jar)),
            *("-d", str(check), str(CHECKS / source)),
        ],
        check=True,
        timeout=120,
    )
    return {"java": Path(java), "ours": ours, "check": check, "jar": jar}
