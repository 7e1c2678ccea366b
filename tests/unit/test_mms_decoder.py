"""torch-mme's replacement of MMS's response decoder (torch_mme/runtime/java): any cut of a response decodes the same.

Frames come from MMS's own Python encoder (``create_predict_response``) with
the handler's real responses; tests/java/DecoderCheck.java feeds each one to
the decoder whole, cut in two at every byte, and one byte at a time. MMS's
stock decoder fails on some cuts (the "Worker died." the fuzz tier found);
ours on none.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mms.context import Context, RequestProcessor
from mms.protocol.otf_message_handler import create_predict_response

from tests.support.java import compile_check
from torch_mme.runtime import mms_java

CHECK = Path(__file__).resolve().parents[1] / "java" / "DecoderCheck.java"


def _frame(bodies: list[bytes], statuses: list[tuple[int, str]], content_type: str) -> bytes:
    context = Context("m", "/tmp/m", None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor({}) for _ in bodies]
    for idx, (status, phrase) in enumerate(statuses):
        context.set_response_content_type(idx, content_type)
        if status != 200:
            context.set_response_status(status, phrase, idx)
    ids = {idx: f"{idx:08d}-aaaa-bbbb-cccc-{idx:012d}" for idx in range(len(bodies))}
    return bytes(create_predict_response(bodies, ids, "Prediction success", 200, context))


FRAMES = {
    "small_json": _frame([b"[1.0]"], [(200, "")], "application/json"),
    "empty_body": _frame([b""], [(200, "")], "text/csv"),
    "long_reason": _frame([b'{"code": 400, "message": "' + b"x" * 900 + b'"}'], [(400, "y" * 900)], "application/json"),
    "batch_of_three": _frame(
        [b"1,2\n", b'{"code": 415}', b"\x93NUMPY" + bytes(200)],
        [(200, ""), (415, "unsupported"), (200, "")],
        "application/x-npy",
    ),
    "worker_error": bytes(create_predict_response(None, {0: "0" * 36}, "Prediction failed", 503)),
}


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> dict[str, Path]:
    compiled = compile_check(tmp_path_factory, CHECK.name)
    frames = tmp_path_factory.mktemp("frames")
    for name, frame in FRAMES.items():
        (frames / name).write_bytes(frame)
    return {**compiled, "frames": frames}


def _failures(classes: dict[str, Path], *class_path: Path) -> dict[str, int]:
    files = [str(classes["frames"] / name) for name in FRAMES]
    done = subprocess.run(
        [str(classes["java"]), "-cp", ":".join(map(str, class_path)), "DecoderCheck", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(re.findall(r"^(\S+) cuts=\d+ failures=(\d+)", done.stdout, re.MULTILINE))
    assert sorted(lines) == sorted(FRAMES), done.stdout
    return {name: int(count) for name, count in lines.items()}


def test_every_cut_of_every_response_decodes_like_the_whole_response(classes):
    failures = _failures(classes, classes["ours"], classes["check"], classes["jar"])
    assert failures == dict.fromkeys(FRAMES, 0)


def test_mms_stock_decoder_fails_on_cuts_inside_the_status_or_headers(classes):
    """Why the replacement exists: the same check fails MMS's own class, on every frame with a prediction."""
    failures = _failures(classes, classes["check"], classes["jar"])
    assert all(failures[name] > 0 for name in FRAMES if name != "worker_error"), failures


def test_compiled_classes_are_reused_from_the_cache(classes):
    java = str(classes["java"])
    assert mms_java.compiled_classes(java, into=classes["ours"].parent) == classes["ours"]
