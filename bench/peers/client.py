"""The load generator: raw keep-alive HTTP/1.1 over TCP, request bytes built once, the lightest client Python has.

The client runs on the same 2 cores as the servers, so it must cost little and the same for all of them:
no ``http.client`` objects per request, just ``sendall`` and a parse of the status line, the headers and
a ``Content-Length`` (or chunked) body. One client = one connection, reopened only if the server closes it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from bench.common import JSON_TYPE


def raw_request(port: int, path: str, body: bytes) -> bytes:
    """The bytes of ``POST path`` with a JSON body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {JSON_TYPE}\r\nAccept: {JSON_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


class KeepAlive:
    """One blocking keep-alive connection: ``status, body = conn.send(raw)``."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.opened = 0

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.opened += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        if b"content-length" in headers:
            body = self._take(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            self._line()
            body = b"".join(parts)
        else:
            raise ConnectionError("response without Content-Length or chunked encoding")
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body


def timed(conn: KeepAlive, raw: bytes, count: int) -> list[float]:
    """Per-request seconds of ``count`` requests on ``conn``; any non-200 raises."""
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        status, body = conn.send(raw)
        samples.append(clock() - start)
        if status != 200:
            raise RuntimeError(f"invoke answered {status}: {body[:300]!r}")
    return samples


@dataclass
class Load:
    """What a fixed-duration run counted: completed requests, errors and per-request seconds."""

    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)
    connections: int = 0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def merge(self, other: Load) -> None:
        self.ok += other.ok
        self.errors += other.errors
        for kind, count in other.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count
        self.latency_s += other.latency_s
        self.connections += other.connections


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status, and whether the server closes the connection after this response."""
    status, headers = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            parts.append(await reader.readexactly(size + 2))
        await reader.readuntil(b"\r\n")
        body = b"".join(p[:-2] for p in parts)
    else:
        raise ConnectionError("response without Content-Length or chunked encoding")
    del body
    return status, headers.get(b"connection", b"").lower() == b"close"


async def _client(port: int, raw: bytes, window: list[float], go: asyncio.Event, load: Load) -> None:
    """Connect, wait for ``go``, then send ``raw`` back to back until ``window[0]`` (a perf_counter deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    load.connections += 1
    await go.wait()
    clock = time.perf_counter
    try:
        while (now := clock()) < window[0]:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                load.connections += 1
            try:
                writer.write(raw)
                status, closing = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                load.error(type(exc).__name__)
                writer.close()
                writer = None
                continue
            if status == 200:
                load.ok += 1
                load.latency_s.append(clock() - now)
            else:
                load.error(f"HTTP {status}")
            if closing:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def _run_load(port: int, raws: list[bytes], clients: int, duration_s: float) -> tuple[Load, float]:
    load = Load()
    go = asyncio.Event()
    window = [0.0]
    tasks = [asyncio.create_task(_client(port, raws[i % len(raws)], window, go, load)) for i in range(clients)]
    while load.connections < clients and not any(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    start = time.perf_counter()
    window[0] = start + duration_s
    go.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration_s + 60)
    except asyncio.TimeoutError:
        load.error("client stuck past the deadline")
    return load, time.perf_counter() - start


def run_load(port: int, raws: list[bytes], clients: int, duration_s: float) -> tuple[Load, float]:
    """``clients`` connections, client i sending ``raws[i % len(raws)]`` back to back for ``duration_s``."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_run_load(port, raws, clients, duration_s))
