"""A real S3 for the tests: moto's server on 127.0.0.1, in this process, on a free port.

It speaks HTTP like S3 does, so the code under test (and any subprocess
given ``env``) runs boto3 unchanged; nothing is patched. moto keeps its state
per process, so the server is reset when it starts and when it stops.

    with moto_s3() as (endpoint_url, env):
        make_bucket(endpoint_url, "models")
        subprocess.run([...], env={**os.environ, **env})
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

REGION = "us-east-1"
KEY = "testing"


def s3_env(endpoint_url: str) -> dict[str, str]:
    """The AWS_* variables that point boto3 at ``endpoint_url`` with throwaway credentials.

    AWS_ENDPOINT_URL_S3 and AWS_REGION are set too: they take precedence over
    AWS_ENDPOINT_URL and AWS_DEFAULT_REGION, so values inherited from the
    caller's environment cannot send requests elsewhere.
    """
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": KEY,
        "AWS_SESSION_TOKEN": KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the test's own setup, independent of the environment."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=KEY, aws_secret_access_key=KEY
    )


def make_bucket(endpoint_url: str, name: str) -> None:
    """Create bucket ``name`` (at least 3 characters; us-east-1 takes no LocationConstraint)."""
    client(endpoint_url).create_bucket(Bucket=name)


def reset(endpoint_url: str) -> None:
    """Drop every bucket and object moto holds."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextmanager
def moto_s3() -> Iterator[tuple[str, dict[str, str]]]:
    """Start moto's S3 on 127.0.0.1 (a free port), yield ``(endpoint_url, env)``, stop it after.

    For a pytest fixture: ``with moto_s3() as (url, env): yield url, env``.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    try:
        reset(endpoint_url)
        yield endpoint_url, s3_env(endpoint_url)
    finally:
        with suppress(OSError):
            reset(endpoint_url)
        server.stop()
        inner = getattr(server, "_server", None)  # stop() ends serve_forever but leaves the socket open
        if inner is not None:
            inner.server_close()
