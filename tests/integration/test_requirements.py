"""Per-model requirements against the real MMS behind ``torch-mme serve``: isolation, reuse, failures.

The server runs with ``TORCH_MME_PIP_INDEX=off`` and a private ``TORCH_MME_DEPS_DIR``: the
models ship their wheels in ``code/wheels/``, nothing touches the network or the user's cache.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import logged_server, write_script_model
from tests.unit.test_requirements import build_wheel
from torch_mme.tools.local_server import LocalServer

MISSING = "nosuchpkg-torch-mme==9.9"

VERSION_MODEL = """
    import json


    def model_fn(model_dir):
        return object()


    def transform_fn(model, body, content_type, accept):
        try:
            import tmmepkg
        except ImportError:
            return json.dumps({"version": None}), "application/json"
        return json.dumps({"version": tmmepkg.__version__, "file": tmmepkg.__file__}), "application/json"
"""


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deps")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tmmepkg 1.0 and 2.0, built once: every model that ships one ships the same bytes."""
    folder = tmp_path_factory.mktemp("wheels")
    return {version: build_wheel(folder / version, "tmmepkg", version) for version in ("1.0", "2.0")}


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "serve.log"


@pytest.fixture(scope="module")
def deps_server(models_root: Path, deps_dir: Path, log_path: Path):
    env = {"TORCH_MME_PIP_INDEX": "off", "TORCH_MME_DEPS_DIR": str(deps_dir), "TORCH_MME_WHEELHOUSE": ""}
    with logged_server(models_root, log_path, env=env, timeout_s=30) as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def versioned_model(models_root: Path, name: str, requirements: str, wheel: Path | None = None) -> Path:
    model_dir = models_root / name / "model"
    write_script_model(model_dir, VERSION_MODEL)
    (model_dir / "code" / "requirements.txt").write_text(requirements)
    if wheel is not None:
        (model_dir / "code" / "wheels").mkdir()
        shutil.copy(wheel, model_dir / "code" / "wheels" / wheel.name)
    return model_dir


def version_of(server: LocalServer, name: str) -> dict:
    status, _, body = server.invoke(name, b"{}", "application/json")
    assert status == 200, body
    return json.loads(body)


def wait_for_log(log_path: Path, text: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def complete_folders(deps_dir: Path) -> list[Path]:
    return sorted(p for p in deps_dir.iterdir() if (p / ".torch-mme-complete").is_file())


def test_each_model_sees_its_own_version_and_a_twin_reuses_the_folder(
    deps_server, models_root, deps_dir, wheels, log_path
):
    one, two, plain = unique("tmme1"), unique("tmme2"), unique("plain")
    assert deps_server.load(one, str(versioned_model(models_root, one, "tmmepkg==1.0\n", wheels["1.0"])))[0] == 200
    assert deps_server.load(two, str(versioned_model(models_root, two, "tmmepkg==2.0\n", wheels["2.0"])))[0] == 200
    plain_dir = models_root / plain / "model"
    write_script_model(plain_dir, VERSION_MODEL)
    assert deps_server.load(plain, str(plain_dir))[0] == 200

    first, second = version_of(deps_server, one), version_of(deps_server, two)
    assert first["version"] == "1.0" and second["version"] == "2.0"
    assert first["file"].startswith(str(deps_dir)) and second["file"].startswith(str(deps_dir))
    assert version_of(deps_server, plain)["version"] is None  # nothing leaks into a model without requirements
    folders = complete_folders(deps_dir)
    assert len(folders) == 2
    markers = {p: (p / ".torch-mme-complete").stat().st_mtime_ns for p in folders}

    # a third model with the same requirements and wheels as the first: same folder, no pip
    twin = unique("twin")
    twin_dir = versioned_model(models_root, twin, "# same as the first\ntmmepkg==1.0\n", wheels["1.0"])
    assert deps_server.load(twin, str(twin_dir))[0] == 200
    assert version_of(deps_server, twin) == first
    assert wait_for_log(log_path, f"requirements of {twin} satisfied by ")
    assert f"installing requirements of {twin}" not in log_path.read_text(errors="replace")
    assert complete_folders(deps_dir) == folders
    assert {p: (p / ".torch-mme-complete").stat().st_mtime_ns for p in folders} == markers

    # unload and load again: reused, not reinstalled
    assert deps_server.unload(one) == 200
    assert deps_server.load(one, str(models_root / one / "model"))[0] == 200
    assert version_of(deps_server, one)["version"] == "1.0"
    assert complete_folders(deps_dir) == folders


def test_an_uninstallable_requirement_fails_load_model_with_pips_reason(deps_server, models_root, deps_dir):
    name = unique("missing")
    model_dir = versioned_model(models_root, name, f"{MISSING}\n")
    before = complete_folders(deps_dir)
    status, body = deps_server.load(name, str(model_dir))
    assert status == 500, body
    assert body["type"] == "DependencyInstallError"
    assert f"No matching distribution found for {MISSING}" in body["message"]
    assert "requirements.txt" in body["message"] and "Traceback" not in body["message"]
    assert deps_server.request("GET", f"/models/{name}")[0] == 404
    assert complete_folders(deps_dir) == before
    assert not [p for p in deps_dir.iterdir() if p.name.startswith(".tmp-")]
    # the name is free: fixed, the model loads under it
    (model_dir / "code" / "requirements.txt").unlink()
    assert deps_server.load(name, str(model_dir))[0] == 200


def test_without_the_fork_server_too(models_root, deps_dir, wheels, tmp_path):
    """A fresh interpreter per model installs before it imports torch; the folder is shared with forked models."""
    env = {"TORCH_MME_PIP_INDEX": "off", "TORCH_MME_DEPS_DIR": str(deps_dir), "TORCH_MME_FORK_SERVER": "false"}
    with open(tmp_path / "serve.log", "wb") as log, LocalServer(str(models_root), env=env, log=log) as server:
        name = unique("fresh")
        assert server.load(name, str(versioned_model(models_root, name, "tmmepkg==2.0\n", wheels["2.0"])))[0] == 200
        answer = version_of(server, name)
        assert answer["version"] == "2.0" and answer["file"].startswith(str(deps_dir))
