"""docker-build.sh's own behaviour, without building: --help, --dry-run, and its clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from container.engine import ROOT, WHEELHOUSE, torch_wheel_args

pytestmark = pytest.mark.container

SCRIPT = str(ROOT / "docker-build.sh")


def docker_build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_help_lists_every_option():
    done = docker_build("--help")
    assert done.returncode == 0
    for option in ("--tag", "--base-image", "--wheelhouse", "--fill-wheelhouse", "--gpu", "--push", "--dry-run"):
        assert option in done.stdout


def test_dry_run_prints_the_commands_and_runs_none(tmp_path: Path):
    wheelhouse = tmp_path / "wheels"
    done = docker_build(
        "--dry-run", "--engine", "podman", "--wheelhouse", str(wheelhouse), "--fill-wheelhouse",
        "--gpu", "--tag", "team/torch-mme:1", "--push", "--region", "eu-west-1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("pip download" in line and "download.pytorch.org/whl/cu128" in line for line in lines)
    build = next(line for line in lines if line.startswith("+ podman build"))
    assert "BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04" in build and "OFFLINE=1" in build
    assert f"--build-context wheelhouse={wheelhouse}" in build and "--format docker" in build
    assert any("aws ecr get-login-password --region eu-west-1 | podman login" in line for line in lines)
    assert lines[-1] == "+ podman push ${ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/team/torch-mme:1"
    assert f"+ mkdir -p {wheelhouse}" in lines and not wheelhouse.exists()  # printed, not run


def test_a_wheelhouse_missing_a_wheel_is_named_before_building(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = docker_build("--engine", "podman", "--dry-run", "--wheelhouse", str(empty))
    assert done.returncode == 0  # a dry run checks nothing
    done = docker_build("--wheelhouse", str(empty), env={"PATH": _path_with_fake_engine(tmp_path)})
    assert done.returncode == 1
    assert f"the wheelhouse {empty} has no wheel of torch==2.13.0" in done.stderr
    torch_wheel = torch_wheel_args()
    if torch_wheel:  # the local torch wheel fits the image's platform: the next requirement is the one named
        only = tmp_path / "torch-only"
        only.mkdir()
        (only / Path(torch_wheel[1]).name).symlink_to(torch_wheel[1])
        done = docker_build("--wheelhouse", str(only), env={"PATH": _path_with_fake_engine(tmp_path)})
        assert done.returncode == 1 and "has no wheel of setuptools<81" in done.stderr, done.stderr
    retrying = sorted(WHEELHOUSE.glob("retrying-*.whl"))
    stale = (
        "has no wheel of"
        in docker_build("--wheelhouse", str(WHEELHOUSE), env={"PATH": _path_with_fake_engine(tmp_path)}).stderr
    )  # the cached wheelhouse of an earlier run lacks a requirement added since: the image test refills it
    if retrying and not stale:  # a filled wheelhouse less one dependency of a dependency: named, with who needs it
        partial = tmp_path / "partial"
        partial.mkdir()
        for wheel in WHEELHOUSE.glob("*.whl"):
            if wheel != retrying[0]:
                (partial / wheel.name).symlink_to(wheel)
        done = docker_build("--wheelhouse", str(partial), env={"PATH": _path_with_fake_engine(tmp_path)})
        assert done.returncode == 1, done.stderr
        assert "has no wheel of retrying" in done.stderr and "(needed by sagemaker-inference" in done.stderr


def test_the_wheelhouse_check_ignores_pip_configuration(tmp_path: Path):
    """A global pip.conf (or PIP_* variables) whose find-links hold torch must not answer for the wheelhouse."""
    from tests.unit.test_requirements import build_wheel

    elsewhere = tmp_path / "elsewhere"
    build_wheel(elsewhere, "torch", "2.13.0")  # py3-none-any: fits the image's platform flags
    for folder in ("xdg", "home/.config"):
        (tmp_path / folder / "pip").mkdir(parents=True)
        (tmp_path / folder / "pip" / "pip.conf").write_text(f"[global]\nfind-links = {elsewhere}\n")
    config = tmp_path / "xdg" / "pip" / "pip.conf"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        "PATH": _path_with_fake_engine(tmp_path),
        "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),  # pip's global configuration (/etc/xdg/pip/pip.conf)
        "HOME": str(tmp_path / "home"),
        "PIP_CONFIG_FILE": str(config),
        "PIP_FIND_LINKS": str(elsewhere),
    }
    done = docker_build("--wheelhouse", str(empty), env=env)
    assert done.returncode == 1
    assert f"the wheelhouse {empty} has no wheel of torch==2.13.0" in done.stderr, done.stderr


def test_temporary_files_are_in_a_private_folder_removed_at_exit(tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = docker_build("--engine", "podman", "--dry-run", "--wheelhouse", str(tmp_path), env={"TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stderr
    written = next(line for line in done.stdout.splitlines() if "container/requirements.py" in line)
    requirements = Path(written.rsplit("> ", 1)[1])
    assert requirements.parent.parent == tmp and requirements.parent.name.startswith("torch-mme-build.")
    assert str(os.getpid()) not in requirements.parent.name
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"TMPDIR": str(tmp), "PATH": _path_with_fake_engine(tmp_path)}
    done = docker_build("--wheelhouse", str(empty), env=env)
    assert done.returncode == 1 and "has no wheel of" in done.stderr, done.stderr
    assert os.listdir(tmp) == []  # pip's log too, although the script ended with an error


def test_no_engine_is_a_clear_error(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mkdir", "seq", "sed", "mktemp", "rm", "cat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    done = docker_build(env={"PATH": str(bin_dir)})
    assert done.returncode == 1
    assert "no container engine" in done.stderr and "scripts/container-env.sh" in done.stderr


@pytest.mark.skipif(not shutil.which("aws"), reason="the AWS CLI is not installed")
def test_push_without_aws_credentials_fails_before_building(tmp_path: Path):
    no_credentials = {
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_PROFILE": "",
        "PATH": _path_with_fake_engine(tmp_path),
    }
    done = docker_build("--push", "--region", "us-east-1", env=no_credentials)
    assert done.returncode == 1 and "no usable AWS credentials" in done.stderr, done.stderr
    assert "building" not in done.stderr


def _path_with_fake_engine(tmp_path: Path) -> str:
    """PATH with a `docker` whose `info` answers and whose `build` fails loudly: the checks before a build run."""
    fake = tmp_path / "fake-engine"
    fake.mkdir(exist_ok=True)
    docker = fake / "docker"
    docker.write_text('#!/bin/sh\n[ "$1" = info ] && exit 0\necho "fake engine: $*" >&2\nexit 99\n')
    docker.chmod(0o755)
    return f"{fake}{os.pathsep}{os.environ['PATH']}"
