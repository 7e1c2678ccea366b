"""The model store: where TargetModel artifacts live, a local folder or ``s3://bucket/prefix``.

SageMaker resolves a TargetModel relative to the endpoint's ModelDataUrl
prefix and downloads it before LoadModel; the local endpoint does the same
through a ``ModelStore``. Targets come from clients, so ``check_target`` is the
only way in: a target that is not a plain relative path never reaches the
filesystem or an S3 key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import unicodedata
from typing import Any, Protocol

from torch_mme import settings
from torch_mme.common import is_inside

MAX_TARGET = 1024  # S3's limit on a key, and SageMaker's on TargetModel


class StoreError(Exception):
    """The store cannot be read or written; ``str(self)`` is one line for a client."""


class ArtifactNotFound(StoreError):
    """No artifact at that target."""


class InvalidTarget(StoreError):
    """A TargetModel that is not a safe relative path."""


def _show(target: str, limit: int = 120) -> str:
    """``repr`` keeps control characters on one line; long targets are cut."""
    text = repr(target)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_target(target: str) -> str:
    """Validate a TargetModel: a relative path like ``a/b/model.tar.gz``; returns it normalised.

    One leading '/' is dropped: SageMaker reads a TargetModel relative to the
    ModelDataUrl prefix, botocore allows '/sam.tar.gz' and AWS's multi-model
    examples send it. Nothing else is repaired: every other form that would need
    normalising ('//a', 'a//b', 'a/./b', 'a\\b') is refused, so the same string
    names the same file in a folder and the same key in S3.
    """
    if not isinstance(target, str):
        raise InvalidTarget(f"TargetModel must be a string, not {type(target).__name__}")
    if not target:
        raise InvalidTarget("TargetModel is empty")
    if len(target) > MAX_TARGET:
        raise InvalidTarget(f"TargetModel is longer than {MAX_TARGET} characters")
    if any(unicodedata.category(c) == "Cc" for c in target):
        raise InvalidTarget(f"TargetModel {_show(target)} contains control characters")
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTarget(f"TargetModel {_show(target)} is not valid UTF-8") from None
    if "\\" in target:
        raise InvalidTarget(f"TargetModel {_show(target)} contains a backslash")
    if target.startswith("/"):
        target = target[1:]
    if target.startswith("/") or not target:
        raise InvalidTarget(f"TargetModel {_show(target)} must be a path relative to the model store")
    for part in target.split("/"):
        if part in ("", ".", ".."):
            raise InvalidTarget(f"TargetModel {_show(target)} has an empty, '.' or '..' path component")
    return target


class ModelStore(Protocol):
    url: str

    def fetch(self, target: str, dest_path: str) -> int:
        """Copy the artifact to ``dest_path`` (its folder exists) atomically; returns its size in bytes."""
        ...

    def size(self, target: str) -> int:
        """The artifact's size in bytes, so the disk cache can make room before the download."""
        ...

    def put(self, source_path: str, target: str) -> None:
        """Upload a local file as ``target`` (``torch-mme package --upload``)."""
        ...


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class LocalStore:
    """A folder as the store: targets are paths below it, and nothing outside it is ever read or written."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise StoreError(f"model store {root} is not an existing folder")
        self.root = os.path.realpath(root)
        self.url = self.root

    def _path(self, target: str) -> str:
        """The real path of ``target``; refused when a symlink on the way leads out of the root."""
        path = os.path.realpath(os.path.join(self.root, check_target(target)))
        if not is_inside(path, self.root):
            raise InvalidTarget(f"TargetModel {_show(target)} resolves outside the model store")
        return path

    def _source(self, target: str) -> str:
        path = self._path(target)
        if not os.path.isfile(path):
            raise ArtifactNotFound(f"no artifact {_show(target)} in {self.url}")
        return path

    def size(self, target: str) -> int:
        path = self._source(target)
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {_show(target)} in {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {_show(target)}: {_os_reason(exc)}") from None

    def fetch(self, target: str, dest_path: str) -> int:
        source = self._source(target)
        part = dest_path + ".part"
        try:
            shutil.copyfile(source, part)
            os.replace(part, dest_path)
        except FileNotFoundError as exc:
            _remove(part)
            if exc.filename == source:
                raise ArtifactNotFound(f"no artifact {_show(target)} in {self.url}") from None
            raise StoreError(f"cannot copy {_show(target)}: {_os_reason(exc)}") from None
        except OSError as exc:
            _remove(part)
            raise StoreError(f"cannot copy {_show(target)}: {_os_reason(exc)}") from None
        return os.path.getsize(dest_path)

    def put(self, source_path: str, target: str) -> None:
        path = self._path(target)
        part = path + ".part"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(source_path, part)
            os.replace(part, path)
        except OSError as exc:
            _remove(part)
            raise StoreError(f"cannot write {_show(target)} to {self.url}: {_os_reason(exc)}") from None


_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_NO_BUCKET = ("NoSuchBucket",)


def _boto_supports_endpoint_env() -> bool:
    """botocore >= 1.31 reads AWS_ENDPOINT_URL(_S3) itself (and ``endpoint_url`` in the config file)."""
    from botocore.config import Config

    return "ignore_configured_endpoint_urls" in Config.OPTION_DEFAULTS


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> ``("bucket", "prefix")``; the prefix may be empty."""
    if not url.startswith("s3://"):
        raise StoreError(f"{url} is not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise StoreError(f"{url} names no bucket")
    return bucket, prefix.strip("/")


class S3Store:
    """A bucket and prefix as the store; the client is made on first use, so opening a store needs no network.

    Endpoint, credentials and retries come from the usual AWS environment
    (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL point it at moto or MinIO). The
    region is AWS_REGION (what SageMaker sets), else AWS_DEFAULT_REGION, else
    the config file's, else us-east-1. One client serves every thread: boto3
    clients are thread-safe, sessions are not, so only creation is locked.
    """

    max_pool_connections = 64  # download_file runs up to 10 threads per fetch, and fetches run side by side

    def __init__(self, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise StoreError("S3 model store names no bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        region = settings.aws_region() or session.region_name
        kwargs: dict[str, Any] = {
            "region_name": region or "us-east-1",
            "config": Config(max_pool_connections=self.max_pool_connections),
        }
        if not _boto_supports_endpoint_env():
            endpoint = settings.aws_s3_endpoint()
            if endpoint:
                kwargs["endpoint_url"] = endpoint
        return session.client("s3", **kwargs)

    def key(self, target: str) -> str:
        target = check_target(target)
        return f"{self.prefix}/{target}" if self.prefix else target

    def _error(self, exc: Exception, target: str, action: str) -> StoreError:
        """Map a boto3/botocore failure to ArtifactNotFound or a one-line StoreError."""
        from botocore.exceptions import ClientError

        where = f"s3://{self.bucket}/{self.key(target)}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NO_BUCKET:
                return StoreError(f"S3 bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND:
                return self._not_found(target, where)
            message = str(error.get("Message") or "").strip()
            reason = f"{code}: {message}" if message and message != code else code or "unknown error"
            return StoreError(f"S3 {action} of {where} failed: {_one_line(reason)}")
        text = _one_line(str(exc))
        if "NoSuchBucket" in text:
            return StoreError(f"S3 bucket {self.bucket!r} does not exist")
        return StoreError(f"S3 {action} of {where} failed: {text or type(exc).__name__}")

    def _not_found(self, target: str, where: str) -> StoreError:
        """HEAD answers a bare 404 for a missing bucket too; ask the bucket so the message says which."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND or code in _NO_BUCKET:
                return StoreError(f"S3 bucket {self.bucket!r} does not exist")
        except BotoCoreError:
            pass
        return ArtifactNotFound(f"no artifact at {where}")

    def size(self, target: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(target)
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, target, "HEAD") from None

    def fetch(self, target: str, dest_path: str) -> int:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import S3DownloadFailedError

        key = self.key(target)
        part = dest_path + ".part"
        try:
            self.client.download_file(self.bucket, key, part)
            os.replace(part, dest_path)
        except (ClientError, BotoCoreError, Boto3Error, S3DownloadFailedError) as exc:
            _remove(part)
            raise self._error(exc, target, "download") from None
        except OSError as exc:
            _remove(part)
            raise StoreError(f"cannot write {dest_path}: {_os_reason(exc)}") from None
        return os.path.getsize(dest_path)

    def put(self, source_path: str, target: str) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(target)
        try:
            self.client.upload_file(source_path, self.bucket, key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, target, "upload") from None
        except OSError as exc:
            raise StoreError(f"cannot read {source_path}: {_os_reason(exc)}") from None


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


def open_store(src: str) -> ModelStore:
    """``s3://bucket[/prefix]`` -> S3Store; anything else is a folder that must exist -> LocalStore."""
    if src.startswith("s3://"):
        return S3Store(*parse_s3_url(src))
    return LocalStore(src)
