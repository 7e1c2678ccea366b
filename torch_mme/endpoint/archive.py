"""Safe extraction of a ``model.tar.gz`` from the model store.

Anyone who can write the store can hand us an archive, so nothing in it may
land outside the destination folder, no link may point outside it, and neither
the member sizes nor the decompressed stream may exceed the caps. tarfile's
``filter="data"`` runs as well, but its checks rely on ``os.path.realpath``
at the moment each member is extracted; the checks here walk the links
themselves and look at every link again once all members are out.

The archive is read as one forward stream (tarfile ``"r|"`` over a
decompressor we open ourselves), so every byte tarfile reads, headers included,
goes through :class:`_CountingReader`.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from typing import IO

DEFAULT_MAX_BYTES = 8 * 2**30
DEFAULT_MAX_MEMBERS = 100_000
SLACK_BYTES = 2**20
"""Decompressed bytes allowed beyond ``max_bytes``: end-of-archive blocks and tarfile's read-ahead."""
SLACK_PER_MEMBER = 4096
"""And per member: its header block, padding to 512 bytes and a pax or GNU long-name header."""
MAX_LINK_HOPS = 40  # Linux's limit on symlinks followed in one path lookup
_CHUNK = 2**20


class ArchiveError(Exception):
    """Base class; ``str(self)`` is a one-line reason naming the member."""


class UnsafeArchive(ArchiveError):
    """A member would escape the folder, is a device or FIFO, or the archive is too big or has too many members."""


class CorruptArchive(ArchiveError):
    """Not a (compressed) tar archive, or one that ends early or fails its checksum."""


_DECOMPRESSORS: list[tuple[bytes, Callable[[IO[bytes]], IO[bytes]]]] = [
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
]


class _CountingReader:
    """Reads the decompressed tar stream, refusing to read more than ``limit`` bytes.

    Member sizes are checked from the headers before any data is read; this
    catches what headers do not announce, e.g. a pax header claiming gigabytes
    that tarfile would read into memory. Decompression errors become
    :class:`CorruptArchive` here, so that an ``OSError`` elsewhere is a real
    I/O error (a full disk), not a bad archive.
    """

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0
        self.member = "(archive header)"

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK
        try:
            data = self.raw.read(min(size, self.limit - self.count + 1))  # one byte over the limit is enough to know
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise CorruptArchive(f"{self.member}: cannot decompress: {exc}") from None
        self.count += len(data)
        if self.count > self.limit:
            raise UnsafeArchive(
                f"{self.member}: the archive decompresses to more than {self.limit} bytes (a decompression bomb?)"
            )
        return data


def extract(
    archive_path: str, dest_dir: str, max_bytes: int = DEFAULT_MAX_BYTES, max_members: int = DEFAULT_MAX_MEMBERS
) -> int:
    """Extract safely into ``dest_dir`` (which must not exist yet); returns the bytes written.

    Atomic: extracts into a temporary sibling folder and renames it into place;
    on any error nothing is left at ``dest_dir`` and the temporary folder is
    removed. A single top-level folder is kept, as SageMaker keeps it.
    """
    dest_dir = os.path.abspath(dest_dir)
    if os.path.lexists(dest_dir):
        raise FileExistsError(errno.EEXIST, "extraction destination exists already", dest_dir)
    parent = os.path.dirname(dest_dir)
    made_parent = not os.path.isdir(parent)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest_dir)}.", suffix=".extracting", dir=parent)
    try:
        written = _extract_into(archive_path, tmp, max_bytes, max_members)
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        if os.path.lexists(dest_dir):
            raise FileExistsError(errno.EEXIST, "extraction destination appeared while extracting", dest_dir)
        os.rename(tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                os.rmdir(parent)
        raise
    return written


def _open_stream(f: IO[bytes]) -> IO[bytes]:
    magic = f.read(6)
    f.seek(0)
    for prefix, opener in _DECOMPRESSORS:
        if magic.startswith(prefix):
            return opener(f)
    return f


def _extract_into(archive_path: str, root: str, max_bytes: int, max_members: int) -> int:
    kinds: dict[str, str] = {}  # normalized name -> "dir", "file", "symlink" or "hardlink"
    symlinks: list[str] = []
    total = 0
    count = 0
    with open(archive_path, "rb") as f, _open_stream(f) as stream:
        reader = _CountingReader(stream, max_bytes + SLACK_BYTES)
        try:
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
                for member in tar:
                    count += 1
                    reader.member = member.name
                    if count > max_members:
                        raise UnsafeArchive(f"{member.name}: more than {max_members} members")
                    reader.limit = max_bytes + SLACK_BYTES + count * SLACK_PER_MEMBER
                    name = _check_member(member, root, kinds)
                    if member.isreg():
                        total += member.size
                        if total > max_bytes:
                            raise UnsafeArchive(f"{member.name}: the members add up to more than {max_bytes} bytes")
                    if name is None:  # the archive's "." entry
                        continue
                    if member.issym():
                        symlinks.append(name)
                    tar.extract(member, root, set_attrs=not member.isdir(), filter="data")
            reader.member = "(after the last member)"
            while reader.read(_CHUNK):  # reaches the compressed stream's end, which verifies its checksum
                pass
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"{reader.member}: refused by tarfile's data filter: {exc}") from None
        except tarfile.TarError as exc:
            where = reader.member if count else "not a tar archive"
            raise CorruptArchive(f"{where}: {exc}") from None
    for name in symlinks:  # a later link can change where an earlier one points
        if _resolve(root, name.split("/")) is None:
            target = os.readlink(os.path.join(root, name))
            raise UnsafeArchive(f"{name}: symlink to {target!r} leads outside the folder")
    return total


def _check_member(member: tarfile.TarInfo, root: str, kinds: dict[str, str]) -> str | None:
    """The member's normalized name, after refusing anything that could act outside ``root``."""
    raw = member.name
    if "\x00" in raw:
        raise UnsafeArchive(f"{raw!r}: NUL in the member name")
    if raw.startswith(("/", os.sep)) or os.path.isabs(raw):
        raise UnsafeArchive(f"{raw}: absolute member name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{raw}: '..' in the member name")
    if member.ischr() or member.isblk():
        raise UnsafeArchive(f"{raw}: device file")
    if member.isfifo():
        raise UnsafeArchive(f"{raw}: FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"{raw}: unsupported member type {member.type!r}")
    if not parts:
        if not member.isdir():
            raise UnsafeArchive(f"{raw}: a member that is not a folder has no name")
        return None
    name = "/".join(parts)
    kind = "dir" if member.isdir() else "symlink" if member.issym() else "hardlink" if member.islnk() else "file"
    if name in kinds and not (kind == "dir" and kinds[name] == "dir"):
        raise UnsafeArchive(f"{raw}: the archive holds {name} twice")
    parent = _resolve(root, parts[:-1])
    if parent is None:
        raise UnsafeArchive(f"{raw}: its folder leads outside the extraction folder through a symlink")
    if parent and os.path.lexists(os.path.join(root, *parent)) and not os.path.isdir(os.path.join(root, *parent)):
        # an earlier member made that path a file (or a link to one): extracting would fail with ENOTDIR
        raise UnsafeArchive(f"{raw}: its folder {'/'.join(parent)} is not a folder in the archive")
    if member.issym():
        _check_symlink(member, root, parts)
    elif member.islnk():
        target = member.linkname
        target_parts = [p for p in target.split("/") if p not in ("", ".")]
        if "\x00" in target or target.startswith("/") or ".." in target_parts:
            raise UnsafeArchive(f"{raw}: hardlink to {target!r} outside the folder")
        if kinds.get("/".join(target_parts)) != "file":
            raise UnsafeArchive(f"{raw}: hardlink to {target!r}, which is not an earlier regular member")
    elif _resolve(root, parts) is None:
        raise UnsafeArchive(f"{raw}: would be written outside the folder through a symlink")
    for i in range(1, len(parts)):
        kinds.setdefault("/".join(parts[:i]), "dir")
    kinds[name] = kind
    return name


def _check_symlink(member: tarfile.TarInfo, root: str, parts: list[str]) -> None:
    target = member.linkname
    if "\x00" in target or not target:
        raise UnsafeArchive(f"{member.name}: symlink with an empty target or a NUL in it")
    if target.startswith("/") or os.path.isabs(target):
        raise UnsafeArchive(f"{member.name}: symlink to the absolute path {target!r}")
    if _resolve(root, [*parts[:-1], *target.split("/")]) is None:
        raise UnsafeArchive(f"{member.name}: symlink to {target!r} leads outside the folder")


def _resolve(root: str, parts: list[str]) -> list[str] | None:
    """Where ``parts`` lead inside ``root`` following the symlinks already on disk, as the kernel would; None if out.

    Walks component lists rather than calling ``os.path.realpath``, which
    treats a component it cannot ``lstat`` (e.g. ENAMETOOLONG) as a plain
    folder and so can be steered to a different answer than the kernel's.
    """
    resolved: list[str] = []
    pending = list(reversed(parts))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        path = os.path.join(root, *resolved, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):  # created later, or the kernel would fail here too
            is_link = False
        except OSError as exc:
            raise UnsafeArchive(f"{'/'.join(parts)}: cannot check the path ({exc.strerror})") from None
        if not is_link:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise UnsafeArchive(f"{'/'.join(parts)}: more than {MAX_LINK_HOPS} symlinks in one path")
        target = os.readlink(path)
        if target.startswith("/"):
            return None
        pending.extend(reversed(target.split("/")))
    return resolved
