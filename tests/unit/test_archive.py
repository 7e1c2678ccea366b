"""Safe extraction: hostile archives built with tarfile directly, each refused with nothing left behind.

Every hostile archive is extracted to ``tmp_path/dest``, so a member named
``../canary`` would land at ``tmp_path/canary``: the canary must never exist.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from torch_mme.endpoint.archive import ArchiveError, CorruptArchive, UnsafeArchive, extract

MB = 2**20
INFERENCE = b"def model_fn(model_dir):\n    return None\n"


def regular(name: str, data: bytes = b"payload", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def folder(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def build(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def good_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        regular("model.pt", b"\x00" * 1000),
        folder("code"),
        regular("code/inference.py", INFERENCE),
        regular("code/requirements.txt", b"numpy\n"),
    ]


def refuse(
    tmp_path: Path,
    archive: Path,
    error: type[ArchiveError],
    names: str,
    canary: Path | None = None,
    **limits: int,
) -> str:
    """Extract, expecting ``error`` naming ``names``; check nothing was left at dest, beside it, or outside."""
    dest = tmp_path / "dest"
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(error) as caught:
        extract(str(archive), str(dest), **limits)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message
    assert not os.path.lexists(dest)
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder left beside dest
    assert not os.path.lexists(canary or tmp_path / "canary")
    return message


@pytest.mark.parametrize("mode", ["w:gz", "w", "w:bz2", "w:xz"])
def test_a_good_archive_is_extracted_as_is(tmp_path: Path, mode: str):
    archive = build(tmp_path / "model.tar.gz", good_members(), mode)
    dest = tmp_path / "models" / "m" / "model"

    written = extract(str(archive), str(dest))

    assert written == 1000 + len(INFERENCE) + len(b"numpy\n")
    assert (dest / "model.pt").read_bytes() == b"\x00" * 1000
    assert (dest / "code" / "inference.py").read_bytes() == INFERENCE
    assert sorted(os.listdir(dest.parent)) == ["model"]  # the temporary folder was renamed, not copied


def test_a_plain_tar_and_a_single_top_level_folder_are_kept(tmp_path: Path):
    archive = build(tmp_path / "model.tar", [folder("inner"), regular("inner/model.pt")], mode="w")
    dest = tmp_path / "dest"

    assert extract(str(archive), str(dest)) == len(b"payload")
    assert os.listdir(dest) == ["inner"]
    assert (dest / "inner" / "model.pt").read_bytes() == b"payload"


def test_a_dot_entry_and_dot_slash_names_are_accepted(tmp_path: Path):
    archive = build(tmp_path / "model.tar.gz", [folder("."), folder("./code"), regular("./code/inference.py")])
    dest = tmp_path / "dest"

    extract(str(archive), str(dest))

    assert (dest / "code" / "inference.py").read_bytes() == b"payload"


def test_permissions_are_made_sane(tmp_path: Path):
    archive = build(
        tmp_path / "model.tar.gz",
        [folder("code"), regular("code/run.sh", b"#!/bin/sh\n", mode=0o6777), regular("model.pt", mode=0o666)],
    )
    dest = tmp_path / "dest"

    extract(str(archive), str(dest))

    script = os.stat(dest / "code" / "run.sh").st_mode
    assert not script & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH | stat.S_IWGRP)
    assert script & stat.S_IXUSR
    assert not os.stat(dest / "model.pt").st_mode & stat.S_IWOTH
    for path in (dest, dest / "code"):
        mode = os.stat(path).st_mode
        assert not mode & stat.S_IWOTH and mode & stat.S_IRWXU == stat.S_IRWXU


def test_symlinks_inside_the_folder_are_allowed(tmp_path: Path):
    archive = build(
        tmp_path / "model.tar.gz",
        [
            *good_members(),
            link("alias.pt", "model.pt"),
            link("code/weights.pt", "../model.pt"),
            link("current", "code"),
            regular("current/helper.py", b"X = 1\n"),
            link("later.pt", "not-yet/model.pt"),
            folder("not-yet"),
            regular("not-yet/model.pt"),
            link("copy.pt", "model.pt", kind=tarfile.LNKTYPE),
        ],
    )
    dest = tmp_path / "dest"

    extract(str(archive), str(dest))

    assert os.readlink(dest / "alias.pt") == "model.pt"
    assert (dest / "code" / "weights.pt").read_bytes() == b"\x00" * 1000
    assert (dest / "code" / "helper.py").read_bytes() == b"X = 1\n"
    assert (dest / "later.pt").read_bytes() == b"payload"
    assert os.path.samefile(dest / "copy.pt", dest / "model.pt")


def test_the_destination_must_not_exist(tmp_path: Path):
    archive = build(tmp_path / "model.tar.gz", good_members())
    (tmp_path / "dest").mkdir()

    with pytest.raises(FileExistsError):
        extract(str(archive), str(tmp_path / "dest"))
    assert os.listdir(tmp_path / "dest") == []


@pytest.mark.parametrize(
    ("members", "names"),
    [
        pytest.param([regular("model.pt"), regular("../canary")], "../canary", id="dot-dot"),
        pytest.param([regular("a/../../canary")], "a/../../canary", id="dot-dot-inside"),
        pytest.param([regular("code/../model.pt")], "code/../model.pt", id="harmless-dot-dot"),
        pytest.param([regular("/etc/abs")], "/etc/abs", id="absolute"),
        pytest.param([regular("a" * 101 + "\x00/../canary")], "NUL", id="nul"),
    ],
)
def test_member_names_that_leave_the_folder_are_refused(tmp_path: Path, members, names):
    archive = build(tmp_path / "model.tar.gz", members)

    refuse(tmp_path, archive, UnsafeArchive, names)


def test_an_absolute_name_is_refused_rather_than_stripped(tmp_path: Path):
    canary = tmp_path / "canary"
    archive = build(tmp_path / "model.tar.gz", [regular(str(canary))])

    refuse(tmp_path, archive, UnsafeArchive, str(canary))
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    ("members", "names", "canary"),
    [
        pytest.param([link("passwd", "/etc/passwd")], "passwd", None, id="absolute-target"),
        pytest.param([link("link", "../../outside")], "link", "../outside", id="up-two"),
        pytest.param([link("up", ".."), regular("up/canary")], "up", None, id="write-through"),
        pytest.param(
            [folder("code"), link("code/up", "../.."), regular("code/up/canary")], "code/up", None, id="nested"
        ),
        # a -> c/.. is inside while c does not exist; c -> . then makes it the parent folder. tarfile's data filter
        # checks each link when it is created, so it accepts both; only writing through a is caught by it.
        pytest.param([link("a", "c/.."), link("c", ".")], "a", None, id="chain"),
        pytest.param([link("a", "c/.."), link("c", "."), regular("a/canary")], "a/canary", None, id="chain-write"),
    ],
)
def test_symlinks_leading_outside_are_refused(tmp_path: Path, members, names, canary):
    archive = build(tmp_path / "model.tar.gz", members)

    refuse(tmp_path, archive, UnsafeArchive, names, canary=tmp_path / canary if canary else None)


def test_an_absolute_symlink_into_the_parent_is_refused(tmp_path: Path):
    archive = build(tmp_path / "model.tar.gz", [link("out", str(tmp_path)), regular("out/canary")])

    refuse(tmp_path, archive, UnsafeArchive, "out")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        pytest.param("../secret", "outside", id="dot-dot"),
        pytest.param("{secret}", "outside", id="absolute"),
        pytest.param("not-a-member", "not an earlier regular member", id="non-member"),
        pytest.param("code", "not an earlier regular member", id="folder"),
    ],
)
def test_hardlinks_outside_or_to_non_members_are_refused(tmp_path: Path, target: str, reason: str):
    secret = tmp_path / "secret"
    secret.write_text("host file")
    archive = build(
        tmp_path / "model.tar.gz",
        [folder("code"), link("hl", target.format(secret=secret), kind=tarfile.LNKTYPE), regular("hl", b"owned")],
    )

    message = refuse(tmp_path, archive, UnsafeArchive, "hl")
    assert reason in message
    assert secret.read_text() == "host file" and os.stat(secret).st_nlink == 1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
    ids=["char", "block", "fifo"],
)
def test_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes, reason: str):
    archive = build(tmp_path / "model.tar.gz", [regular("model.pt"), special("null", kind)])

    message = refuse(tmp_path, archive, UnsafeArchive, "null")
    assert reason in message


def test_a_name_given_twice_is_refused(tmp_path: Path):
    archive = build(tmp_path / "model.tar.gz", [link("model.pt", "x"), regular("model.pt")])

    refuse(tmp_path, archive, UnsafeArchive, "model.pt")


@pytest.mark.parametrize(
    "members",
    [
        [regular("a"), regular("a/b")],
        [regular("a"), folder("a/sub"), regular("a/sub/b")],
        [regular("model.pt"), link("a", "model.pt"), regular("a/b")],
        [regular("model.pt"), link("a", "model.pt", tarfile.LNKTYPE), regular("a/b")],
    ],
    ids=["file", "folder-under-file", "symlink-to-file", "hardlink"],
)
def test_a_member_under_a_file_is_refused(tmp_path: Path, members):
    """``a`` a regular file, then ``a/b``: tarfile failed with NotADirectoryError, which the endpoint answered 500."""
    archive = build(tmp_path / "model.tar.gz", members)

    message = refuse(tmp_path, archive, UnsafeArchive, "a/")
    assert "is not a folder" in message


def zeros_gzip(path: Path, name: str, size: int) -> Path:
    """A .tar.gz of one member holding ``size`` zero bytes, compressed as it is written (no 200 MB in memory)."""
    info = tarfile.TarInfo(name)
    info.size = size
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    chunk = bytes(MB)
    with open(path, "wb") as f:
        f.write(compressor.compress(info.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(size // MB):
            f.write(compressor.compress(chunk))
        f.write(compressor.compress(bytes(size % MB + 1024)))  # the rest, padding and the end-of-archive blocks
        f.write(compressor.flush())
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path: Path):
    archive = zeros_gzip(tmp_path / "bomb.tar.gz", "model.pt", 200 * MB)
    assert archive.stat().st_size < 1 * MB

    started = time.monotonic()
    message = refuse(tmp_path, archive, UnsafeArchive, "model.pt", max_bytes=10 * MB)
    assert time.monotonic() - started < 1.0
    assert "more than" in message


def test_a_stream_larger_than_its_headers_say_is_stopped_while_decompressing(tmp_path: Path):
    """A pax header claiming 20 MB: tarfile would read it all into memory before any member is returned."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 20 * MB
    archive = tmp_path / "pax-bomb.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))

    message = refuse(tmp_path, archive, UnsafeArchive, "decompresses to more than", max_bytes=1 * MB)
    assert "archive header" in message


def test_too_many_members_are_refused(tmp_path: Path):
    # "." entries count as members but touch no disk: 10,000 real folders would take seconds to create and remove
    archive = build(tmp_path / "many.tar.gz", [*(folder(".") for _ in range(10_000)), folder("d10000")])

    refuse(tmp_path, archive, UnsafeArchive, "d10000", max_members=10_000)


def test_random_bytes_are_a_corrupt_archive(tmp_path: Path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(os.urandom(4096))

    refuse(tmp_path, archive, CorruptArchive, "not a tar archive")


def test_a_gzip_of_random_bytes_is_a_corrupt_archive(tmp_path: Path):
    archive = tmp_path / "model.tar.gz"
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    archive.write_bytes(compressor.compress(os.urandom(4096)) + compressor.flush())

    refuse(tmp_path, archive, CorruptArchive, "not a tar archive")


@pytest.mark.parametrize(
    ("mode", "cut", "names"),
    [
        pytest.param("w:gz", 0.5, "model.pt", id="gz-middle"),
        pytest.param("w:gz", 4, "after the last member", id="gz-trailer"),  # only the gzip length field is missing
        pytest.param("w", 0.5, "model.pt", id="tar-middle"),
    ],
)
def test_a_truncated_archive_is_corrupt(tmp_path: Path, mode: str, cut: float, names: str):
    whole = build(tmp_path / "whole", [regular("model.pt", os.urandom(100_000)), regular("code/inference.py")], mode)
    data = whole.read_bytes()
    whole.unlink()
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(data[: int(len(data) * cut) if cut < 1 else len(data) - int(cut)])

    refuse(tmp_path, archive, CorruptArchive, names)
