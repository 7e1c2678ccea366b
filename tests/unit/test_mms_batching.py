"""torch-mme's copy of MMS's ``Model`` (torch_mme/runtime/java/Model.java): a job the front marked alone for its
model, with nothing queued behind it, leaves ``pollBatch`` at once instead of after ``maxBatchDelay``.

tests/java/PollBatchCheck.java runs whichever ``Model`` is first on the class path through ``pollBatch`` with
batch size 16; here it runs against our compiled classes and against MMS's jar alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from handler import alone
from tests.support.java import compile_check
from torch_mme.runtime import mms_java

CHECK = Path(__file__).resolve().parents[1] / "java" / "PollBatchCheck.java"
DELAY_MS = 400


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> dict[str, Path]:
    return compile_check(tmp_path_factory, CHECK.name)


def _batches(classes: dict[str, Path], *class_path: Path) -> dict[str, dict[str, int]]:
    done = subprocess.run(
        [str(classes["java"]), "-cp", ":".join(map(str, class_path)), "PollBatchCheck", str(DELAY_MS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = re.findall(r"^(\S+) size=(\d+) ms=(\d+) hints=(\d+)$", done.stdout, re.MULTILINE)
    assert len(found) == 5, done.stdout
    return {name: {"size": int(size), "ms": int(ms), "hints": int(hints)} for name, size, ms, hints in found}


def test_mms_java_compiles_every_class_of_the_java_folder(classes):
    assert {s.name for s in mms_java.sources()} >= {"Model.java", "ModelResponseDecoder.java", "WorkerLifeCycle.java"}
    for path in (mms_java.CLASS, mms_java.MODEL_CLASS, *mms_java.LIFECYCLE_CLASSES):
        assert (classes["ours"] / path).is_file(), path
    assert [mms_java.class_file(s) for s in mms_java.sources()] == [
        mms_java.MODEL_CLASS,
        mms_java.CLASS,
        *mms_java.LIFECYCLE_CLASSES,
    ]


def test_a_lone_marked_job_is_sent_at_once_and_the_rest_is_mms_batching(classes):
    batches = _batches(classes, classes["ours"], classes["check"], classes["jar"])
    for name in ("lone_marked", "lone_marked_lowercase"):
        assert batches[name]["size"] == 1 and batches[name]["ms"] < DELAY_MS / 2, batches
    assert batches["lone_unmarked"]["size"] == 1 and batches["lone_unmarked"]["ms"] >= DELAY_MS - 50, batches
    for name in ("marked_with_one_queued", "unmarked_then_marked"):  # not alone by the time MMS took it: batched
        assert batches[name]["size"] == 2 and batches[name]["ms"] >= DELAY_MS - 50, batches
    assert all(b["hints"] == 0 for b in batches.values()), batches  # the header never reaches a worker


def test_mms_stock_model_waits_the_whole_delay_for_a_lone_job(classes):
    """Why the copy exists: MMS's own class holds the lone job for ``maxBatchDelay`` and passes the header on."""
    batches = _batches(classes, classes["check"], classes["jar"])
    assert batches["lone_marked"]["ms"] >= DELAY_MS - 50 and batches["lone_marked"]["hints"] == 1, batches


def test_the_java_copy_names_the_handlers_header():
    source = (mms_java.PACKAGE_DIR / "Model.java").read_text()
    assert f'ALONE_HEADER = "{alone.HEADER}"' in source


def test_the_cache_key_covers_every_source(tmp_path, monkeypatch):
    folder = tmp_path / "java"
    folder.mkdir()
    for source in mms_java.sources():
        shutil.copy(source, folder / source.name)
    jar = tmp_path / "model-server.jar"
    jar.write_bytes(b"jar")
    monkeypatch.setattr(mms_java, "PACKAGE_DIR", folder)
    keys = {mms_java._key(jar)}
    for name in ("Model.java", "ModelResponseDecoder.java"):
        with open(folder / name, "a") as f:
            f.write("// changed\n")
        keys.add(mms_java._key(jar))
    (folder / "Extra.java").write_text("class Extra {}\n")
    keys.add(mms_java._key(jar))
    assert len(keys) == 4
    assert mms_java.class_file(folder / "Extra.java") == Path("Extra.class")
