"""Container tier: the image built with docker-build.sh and run with podman or docker.

Where no engine can be made to run, the tests are skipped with the reason; with
CI=true they fail instead (CI machines can run podman, so a skip there would
hide a broken setup).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from container.engine import Engine, EngineUnavailable, find_engine

IMAGE = "torch-mme:container-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container: builds the image with docker-build.sh and runs it (podman/docker)")


def unavailable(reason: str) -> None:
    """Skip loudly, or fail under CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the container tier cannot run: {reason}", pytrace=False)
    message = f"NO CONTAINER ENGINE, the container tier is not tested here: {reason}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)  # shown by `pytest -q` too, unlike a skip's reason
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return find_engine()
    except EngineUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built offline from the cached wheelhouse (the layer cache makes a rebuild quick)."""
    log_path = tmp_path_factory.mktemp("build") / "docker-build.log"
    with open(log_path, "w") as log:
        try:
            engine.build(IMAGE, log)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{_tail(log_path)}", pytrace=False)
    return IMAGE


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
