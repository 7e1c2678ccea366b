"""The model store: TargetModel validation, a local folder, and S3 through a real moto server on 127.0.0.1.

boto3 is not patched: the AWS_* environment points it at moto, as it will
point the endpoint subprocess in the integration tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.s3 import client, make_bucket, moto_s3, reset
from torch_mme.endpoint.store import (
    ArtifactNotFound,
    InvalidTarget,
    LocalStore,
    S3Store,
    StoreError,
    check_target,
    open_store,
)

BUCKET = "models"


# --- check_target -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["model.tar.gz", "a/b/model.tar.gz", "team 1/ü/m-1_2.v3.tar.gz", "..a/b..c/...", "x" * 1024],
)
def test_check_target_accepts_relative_paths(target: str) -> None:
    assert check_target(target) == target


@pytest.mark.parametrize(("target", "relative"), [("/sam.tar.gz", "sam.tar.gz"), ("/a/b.tar.gz", "a/b.tar.gz")])
def test_one_leading_slash_is_relative_to_the_store_as_in_sagemaker(target: str, relative: str) -> None:
    """botocore allows it and AWS's multi-model examples send ``target_model="/sam.tar.gz"``."""
    assert check_target(target) == relative


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("", id="empty"),
        pytest.param("//a/model.tar.gz", id="absolute"),
        pytest.param("/", id="root"),
        pytest.param("..", id="dotdot"),
        pytest.param("a/../../etc/passwd", id="dotdot-inside"),
        pytest.param("./model.tar.gz", id="dot"),
        pytest.param("a/./model.tar.gz", id="dot-inside"),
        pytest.param("a//model.tar.gz", id="empty-component"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("a\\model.tar.gz", id="backslash"),
        pytest.param("..\\model.tar.gz", id="backslash-dotdot"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\x85b", id="c1-control"),
        pytest.param("a\ud800b", id="lone-surrogate"),
        pytest.param("x" * 1025, id="too-long"),
    ],
)
def test_check_target_refuses(target: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        check_target(target)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 200
    assert isinstance(info.value, StoreError)


def test_check_target_refuses_non_strings() -> None:
    with pytest.raises(InvalidTarget, match="string"):
        check_target(None)  # type: ignore[arg-type]


# --- LocalStore ---------------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    root = tmp_path / "store"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "model.tar.gz").write_bytes(b"artifact" * 100)
    return LocalStore(str(root))


def test_local_fetch_and_size(local: LocalStore, tmp_path: Path) -> None:
    dest = tmp_path / "download.tar.gz"
    assert local.size("a/b/model.tar.gz") == 800
    assert local.fetch("a/b/model.tar.gz", str(dest)) == 800
    assert dest.read_bytes() == b"artifact" * 100
    assert not (tmp_path / "download.tar.gz.part").exists()


def test_local_put_creates_folders(local: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "new.tar.gz"
    source.write_bytes(b"new")
    local.put(str(source), "x/y/z/new.tar.gz")
    assert (Path(local.root) / "x" / "y" / "z" / "new.tar.gz").read_bytes() == b"new"
    assert local.size("x/y/z/new.tar.gz") == 3
    with pytest.raises(InvalidTarget):
        local.put(str(source), "../escape.tar.gz")
    with pytest.raises(StoreError, match="cannot write"):
        local.put(str(tmp_path / "absent"), "absent.tar.gz")
    assert not (Path(local.root) / "absent.tar.gz.part").exists()


@pytest.mark.parametrize("target", ["a/b/missing.tar.gz", "nowhere/model.tar.gz", "a/b"])
def test_local_missing_is_not_found(local: LocalStore, tmp_path: Path, target: str) -> None:
    dest = tmp_path / "download.tar.gz"
    with pytest.raises(ArtifactNotFound):
        local.fetch(target, str(dest))
    with pytest.raises(ArtifactNotFound):
        local.size(target)
    assert not dest.exists() and not (tmp_path / "download.tar.gz.part").exists()


def test_local_fetch_into_missing_folder_is_store_error(local: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot copy") as info:
        local.fetch("a/b/model.tar.gz", str(tmp_path / "no" / "such" / "dir" / "m.tar.gz"))
    assert not isinstance(info.value, ArtifactNotFound)


def test_local_refuses_symlinks_out_of_the_root(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.tar.gz").write_bytes(b"secret")
    root = Path(local.root)
    (root / "dir-link").symlink_to(outside, target_is_directory=True)
    (root / "file-link.tar.gz").symlink_to(outside / "secret.tar.gz")
    dest = tmp_path / "download.tar.gz"
    for target in ("dir-link/secret.tar.gz", "file-link.tar.gz"):
        with pytest.raises(InvalidTarget, match="outside"):
            local.fetch(target, str(dest))
        with pytest.raises(InvalidTarget):
            local.size(target)
    source = tmp_path / "new.tar.gz"
    source.write_bytes(b"new")
    with pytest.raises(InvalidTarget):
        local.put(str(source), "dir-link/planted.tar.gz")
    assert not dest.exists() and not (outside / "planted.tar.gz").exists()


def test_local_follows_symlinks_inside_the_root(local: LocalStore, tmp_path: Path) -> None:
    (Path(local.root) / "alias").symlink_to(Path(local.root) / "a" / "b", target_is_directory=True)
    assert local.fetch("alias/model.tar.gz", str(tmp_path / "m.tar.gz")) == 800


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert isinstance(store, LocalStore) and store.url == os.path.realpath(tmp_path)
    with pytest.raises(StoreError, match="not an existing folder"):
        open_store(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "file"))


# --- S3Store against moto -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, dict[str, str]]]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def s3(moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The AWS environment pointed at moto (nothing else from the machine's config), and an empty bucket."""
    endpoint_url, env = moto
    for name in ("AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    make_bucket(endpoint_url, BUCKET)
    yield endpoint_url
    reset(endpoint_url)


def test_open_store_s3_urls() -> None:
    for url, prefix, canonical in [
        ("s3://models/team/a", "team/a", "s3://models/team/a"),
        ("s3://models/team/", "team", "s3://models/team"),
        ("s3://models", "", "s3://models"),
        ("s3://models/", "", "s3://models"),
    ]:
        store = open_store(url)
        assert isinstance(store, S3Store)
        assert (store.bucket, store.prefix, store.url) == ("models", prefix, canonical)
        assert store._client is None  # no client, so no network, until first use
    with pytest.raises(StoreError, match="no bucket"):
        open_store("s3://")


@pytest.mark.parametrize(
    ("url", "key"), [("s3://models/team/a", "team/a/x/model.tar.gz"), ("s3://models", "x/model.tar.gz")]
)
def test_s3_put_fetch_round_trip(s3: str, tmp_path: Path, url: str, key: str) -> None:
    payload = os.urandom(50_000)
    source = tmp_path / "source.tar.gz"
    source.write_bytes(payload)
    store = open_store(url)
    store.put(str(source), "x/model.tar.gz")
    assert client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read() == payload
    assert store.size("x/model.tar.gz") == len(payload)
    dest = tmp_path / "download.tar.gz"
    assert store.fetch("x/model.tar.gz", str(dest)) == len(payload)
    assert dest.read_bytes() == payload
    assert not (tmp_path / "download.tar.gz.part").exists()


def test_s3_prefix_is_the_root(s3: str, tmp_path: Path) -> None:
    client(s3).put_object(Bucket=BUCKET, Key="model.tar.gz", Body=b"top")
    client(s3).put_object(Bucket=BUCKET, Key="team/model.tar.gz", Body=b"team")
    dest = str(tmp_path / "m.tar.gz")
    open_store("s3://models/team").fetch("model.tar.gz", dest)
    assert Path(dest).read_bytes() == b"team"
    open_store("s3://models").fetch("model.tar.gz", dest)
    assert Path(dest).read_bytes() == b"top"
    with pytest.raises(InvalidTarget):
        open_store("s3://models/team").fetch("../model.tar.gz", dest)


def test_s3_missing_key_is_not_found(s3: str, tmp_path: Path) -> None:
    store = open_store("s3://models/team")
    dest = tmp_path / "download.tar.gz"
    with pytest.raises(ArtifactNotFound, match="s3://models/team/missing.tar.gz"):
        store.fetch("missing.tar.gz", str(dest))
    with pytest.raises(ArtifactNotFound):
        store.size("missing.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_s3_missing_bucket_is_a_clear_store_error(s3: str, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket/prefix")
    source = tmp_path / "source.tar.gz"
    source.write_bytes(b"x")
    calls = [
        lambda: store.fetch("model.tar.gz", str(tmp_path / "download.tar.gz")),
        lambda: store.size("model.tar.gz"),
        lambda: store.put(str(source), "model.tar.gz"),
    ]
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        assert not isinstance(info.value, ArtifactNotFound)
        assert str(info.value) == "S3 bucket 'no-such-bucket' does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.tar.gz"]


def test_s3_concurrent_fetches(s3: str, tmp_path: Path) -> None:
    store = open_store("s3://models/many")
    payloads = {f"m{i}/model.tar.gz": os.urandom(200_000 + i) for i in range(8)}
    for target, payload in payloads.items():
        client(s3).put_object(Bucket=BUCKET, Key=f"many/{target}", Body=payload)

    def fetch(target: str) -> tuple[str, int]:
        dest = tmp_path / (target.replace("/", "_"))
        return str(dest), store.fetch(target, str(dest))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, payloads))
    for (dest, size), payload in zip(results, payloads.values(), strict=True):
        assert size == len(payload) and Path(dest).read_bytes() == payload


def test_s3_multipart_download(s3: str, tmp_path: Path) -> None:
    """Above download_file's 8 MiB threshold the object comes in ranged parts on several threads."""
    payload = os.urandom(9 * 2**20)
    client(s3).put_object(Bucket=BUCKET, Key="big.tar.gz", Body=payload)
    dest = tmp_path / "big.tar.gz"
    assert open_store("s3://models").fetch("big.tar.gz", str(dest)) == len(payload)
    assert dest.read_bytes() == payload


def test_s3_endpoint_for_s3_wins_over_the_general_one(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client(s3).put_object(Bucket=BUCKET, Key="model.tar.gz", Body=b"abc")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert open_store("s3://models").size("model.tar.gz") == 3
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert open_store("s3://models").size("model.tar.gz") == 3


def test_s3_region_from_environment(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert S3Store(BUCKET).client.meta.region_name == "eu-west-1"
    monkeypatch.delenv("AWS_REGION")
    assert S3Store(BUCKET).client.meta.region_name == "us-west-2"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert S3Store(BUCKET).client.meta.region_name == "us-east-1"


def test_s3_unreachable_endpoint_is_a_short_store_error(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.monotonic()
    with pytest.raises(StoreError, match="Could not connect") as info:
        open_store("s3://models").size("model.tar.gz")
    assert not isinstance(info.value, ArtifactNotFound) and "\n" not in str(info.value)
    assert time.monotonic() - started < 5
