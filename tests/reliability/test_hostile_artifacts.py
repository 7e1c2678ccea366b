"""Hostile artifacts: archives through the endpoint, pickles and paths through LoadModel. Refused, nothing escapes.

Canary files sit where each payload would write; they must never appear.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from tests.integration.test_endpoint import invoke, publish
from tests.reliability.conftest import assert_short_json_error, record, start_server, stop_server, write_torchscript
from torch_mme.endpoint import archive
from torch_mme.tools.local_server import LocalEndpoint


def _model_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
    return buffer.getvalue()


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    model = _model_bytes()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.pt")
        info.size = len(model)
        tar.addfile(info, io.BytesIO(model))
        for member, data in members:
            if data is not None:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _declared_bomb(path: Path) -> None:
    """A gzip'd tar whose member header announces 9 GiB; only its first MiB is actually there."""
    header = tarfile.TarInfo("weights.bin")
    header.size = 9 * 2**30
    raw = header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 2**20
    path.write_bytes(gzip.compress(raw))


class Canary:
    """A pickled object whose unpickling creates a file: the payload of a malicious ``model.pth``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    store, models_root = base / "store", base / "models"
    store.mkdir()
    models_root.mkdir()
    server = start_server(models_root, base)
    try:
        with (
            open(base / "endpoint.log", "wb") as log,
            LocalEndpoint(str(store), str(models_root), container_url=server.url, log=log) as endpoint,
        ):
            yield {"base": base, "store": store, "models_root": models_root, "server": server, "endpoint": endpoint}
    finally:
        stop_server(server)


def test_hostile_archives_are_refused_through_the_endpoint(world):
    base, store = world["base"], world["store"]
    canary = base / "canary"
    outside = base / "outside"
    outside.mkdir()
    (store / "evil").mkdir()
    cases: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
        "dotdot": [(_member("../../../canary"), b"pwned")],
        "dotdot-deep": [(_member("code/../../canary"), b"pwned")],
        "absolute": [(_member(str(canary)), b"pwned")],
        "symlink-out": [(_member("code", tarfile.SYMTYPE, str(outside)), None)],
        "symlink-relative-out": [(_member("code", tarfile.SYMTYPE, "../../../outside"), None)],
        "symlink-then-write": [
            (_member("code", tarfile.SYMTYPE, "../../../outside"), None),
            (_member("code/canary"), b"pwned"),
        ],
        "hardlink-out": [(_member("hard", tarfile.LNKTYPE, str(canary)), None)],
        "hardlink-dotdot": [(_member("hard", tarfile.LNKTYPE, "../../canary"), None)],
        "char-device": [(_member("null", tarfile.CHRTYPE), None)],
        "block-device": [(_member("disk", tarfile.BLKTYPE), None)],
        "fifo": [(_member("pipe", tarfile.FIFOTYPE), None)],
    }
    for name, members in cases.items():
        _archive(store / "evil" / f"{name}.tar.gz", members)
    _declared_bomb(store / "evil" / "bomb.tar.gz")
    client = world["client"] = world["endpoint"].client()
    for name in [*cases, "bomb"]:
        with pytest.raises(client.exceptions.ValidationError) as caught:
            invoke(client, f"evil/{name}.tar.gz", b"[[1, 2, 3]]", "application/json")
        message = caught.value.response["Error"]["Message"]
        assert "extract" in message and "Traceback" not in message and len(message) < 1000, (name, message)
    assert not canary.exists()
    assert list(outside.iterdir()) == []
    leftovers = [p.name for p in world["models_root"].iterdir() if "evil" in p.name]
    assert leftovers == []
    assert world["server"].request("GET", "/models")[2].count(b"evil") == 0
    # the endpoint still serves a good model
    good = base / "build" / "good"
    write_torchscript(good)
    publish(store, "good.tar.gz", good)
    answer = invoke(client, "good.tar.gz", b"[[1, 2, 3]]", "application/json")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    record("hostile_archives", requests=len(cases) + 2, archives_refused=len(cases) + 1)


def test_a_real_decompression_bomb_stops_at_the_byte_cap(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    member = tarfile.TarInfo("zeros")
    member.size = 64 * 2**20
    with tarfile.open(bomb, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(b"\0" * member.size))
    assert bomb.stat().st_size < 2**20  # a 64 MiB member in well under 1 MiB
    with pytest.raises(archive.UnsafeArchive, match="more than"):
        archive.extract(str(bomb), str(tmp_path / "out"), max_bytes=8 * 2**20)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.tar.gz"]


def test_a_pickle_that_runs_code_on_load_is_refused_by_default(world):
    server, root, base = world["server"], world["models_root"], world["base"]
    canary = base / "pickle-canary"
    model_dir = root / "pickled" / "model"
    model_dir.mkdir(parents=True)
    with open(model_dir / "model.pth", "wb") as f:
        pickle.dump(Canary(str(canary)), f)  # torch.load reads legacy pickles too
    torch.save({"payload": Canary(str(canary))}, model_dir.parent / "zip.pth")
    status, body = server.load("pickled", str(model_dir))
    assert status == 500 and "weights_only" in body["message"], body  # a legacy (non-zip) pickle
    assert not canary.exists()
    os.replace(model_dir.parent / "zip.pth", model_dir / "model.pth")
    status, body = server.load("pickled", str(model_dir))
    assert status == 500 and "TORCH_MME_ALLOW_UNSAFE_PICKLE" in body["message"], body
    assert not canary.exists()
    assert server.request("GET", "/models/pickled")[0] == 404  # nothing left registered
    record("unsafe_pickle", requests=2, refused=2)


def test_load_model_urls_and_names_outside_the_models_root_are_refused(world):
    server, root, base = world["server"], world["models_root"], world["base"]
    outside = base / "elsewhere" / "model"
    write_torchscript(outside)
    (root / "sneaky").mkdir()
    os.symlink(outside, root / "sneaky" / "model")
    os.symlink(base / "elsewhere", root / "linked")
    attempts = [
        ("a", str(outside)),
        ("b", "/etc"),
        ("c", "../elsewhere/model"),
        ("d", str(root / ".." / "elsewhere" / "model")),
        ("e", str(root / "sneaky" / "model")),
        ("f", "linked/model"),
        ("g", "file:///etc"),
        ("h", "s3://bucket/model"),
    ]
    for name, url in attempts:
        status, body = server.load(name, url)
        assert status == 400, (url, status, body)
        assert_short_json_error(400, json.dumps(body).encode())
        assert server.request("GET", f"/models/{name}")[0] == 404
    for name in ("../escape", "a/b", "..", "", "x" * 300, "-dash"):
        status, body = server.load(name, str(root / "sneaky"))
        assert status == 400, (name, status, body)
    record("outside_root", requests=len(attempts) + 6, refused=len(attempts) + 6)
