"""The run folder: private (0700) or refused, and at exit only what ``serve`` made in it is removed.

It holds the sockets of MMS and the template, the launcher MMS runs as its
Python, the MMS config and the load reports: a folder another user can write
lets them run code as the server. A TORCH_MME_RUN_DIR that exists already was
used as it was, and ``shutil.rmtree``-d when the server stopped.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from torch_mme.runtime.serve import ServeError, claim_run_dir, prepare_run_dir, remove_run_dir
from torch_mme.settings import Settings
from torch_mme.tools.local_server import free_port


def serve_with_run_dir(tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """``torch-mme serve`` with TORCH_MME_RUN_DIR=run_dir; bounded, since a refusal exits before MMS starts."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch_mme.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    return subprocess.run(
        [*command, "--model-dir", str(models)],
        env={**os.environ, "TORCH_MME_RUN_DIR": str(run_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("kind", ["world-writable", "group-readable", "symlink", "file"])
def test_serve_refuses_a_run_dir_that_is_not_private_and_leaves_it_alone(tmp_path, kind):
    target = tmp_path / "target"
    target.mkdir()
    (target / "canary").write_text("keep me")
    run_dir = tmp_path / "run"
    if kind == "world-writable":
        run_dir = target
        os.chmod(run_dir, 0o777)
    elif kind == "group-readable":
        run_dir = target
        os.chmod(run_dir, 0o750)
    elif kind == "symlink":
        os.chmod(target, 0o700)
        run_dir.symlink_to(target)  # a private folder, reached through a link someone else could repoint
    else:
        run_dir.write_text("a file")

    done = serve_with_run_dir(tmp_path, run_dir)

    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("torch-mme serve: the run folder"), done.stderr[-2000:]
    assert "TORCH_MME_RUN_DIR" in lines[0] and "0700" in lines[0]
    assert (target / "canary").read_text() == "keep me"
    assert sorted(os.listdir(target)) == ["canary"]  # nothing written into it either


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_a_run_dir_of_another_user_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 4242, -1)
    with pytest.raises(ServeError, match="owned by uid 4242"):
        claim_run_dir(str(run_dir))


def test_a_missing_run_dir_is_created_private_and_removed_whole(tmp_path):
    old = os.umask(0)  # even a permissive umask gives 0700
    try:
        claimed = claim_run_dir(str(tmp_path / "new" / "run"))
    finally:
        os.umask(old)
    assert claimed.created and mode(tmp_path / "new" / "run") == 0o700
    settings = prepare_run_dir(Settings(), claimed)
    (Path(settings.run_dir) / "mms.sock").write_text("")
    remove_run_dir(claimed)
    assert not (tmp_path / "new" / "run").exists()


def test_the_default_run_dir_is_a_private_temporary_folder():
    claimed = claim_run_dir("")
    try:
        assert claimed.created and mode(Path(claimed.path)) == 0o700
    finally:
        remove_run_dir(claimed)
    assert not os.path.exists(claimed.path)


def test_an_existing_private_run_dir_keeps_what_was_there(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "canary").write_text("keep me")
    (run_dir / "notes").mkdir()
    claimed = claim_run_dir(str(run_dir))
    assert not claimed.created
    prepare_run_dir(Settings(), claimed)
    (run_dir / "mms.properties").write_text("made by the run")
    (run_dir / "bin").mkdir()
    (run_dir / "bin" / "mms-python").write_text("made by the run")
    os.symlink("/", run_dir / "java")  # a link the run made is removed, never followed

    remove_run_dir(claimed)

    assert sorted(os.listdir(run_dir)) == ["canary", "notes"]
    assert (run_dir / "canary").read_text() == "keep me"
    assert os.path.isdir("/bin")
