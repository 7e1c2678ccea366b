"""A client for the container's multi-model API (``torch-mme serve`` or the image on port 8080)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

LOAD_TIMEOUT_S = 360.0
"""SageMaker gives up on a LoadModel (and an UnloadModel) after 360 s."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def message(self) -> str:
        """The container's own error message (MMS and torch-mme answer JSON with a ``message``)."""
        try:
            return str(json.loads(self.body).get("message", ""))[:1000] or self.body.decode(errors="replace")[:1000]
        except (ValueError, AttributeError):
            return self.body.decode(errors="replace")[:1000]


class ContainerUnavailable(Exception):
    """The container did not answer (not started, crashed, or the connection broke)."""


class Container:
    def __init__(self, base_url: str, invoke_timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.invoke_timeout_s = invoke_timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, force_close=False), auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, timeout: float, **kwargs: object) -> Reply:
        try:
            async with self.session.request(
                method, self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
            ) as response:
                return Reply(response.status, dict(response.headers), await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ContainerUnavailable(f"container at {self.base_url} did not answer {method} {path}: {exc!r}") from exc

    async def ping(self) -> bool:
        try:
            return (await self._call("GET", "/ping", 5.0)).status == 200
        except ContainerUnavailable:
            return False

    async def load(self, name: str, url: str) -> Reply:
        return await self._call("POST", "/models", LOAD_TIMEOUT_S, json={"model_name": name, "url": url})

    async def unload(self, name: str) -> Reply:
        return await self._call("DELETE", f"/models/{name}", LOAD_TIMEOUT_S)

    async def invoke(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        return await self._call("POST", f"/models/{name}/invoke", self.invoke_timeout_s, data=body, headers=headers)
