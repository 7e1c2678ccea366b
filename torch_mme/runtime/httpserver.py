"""The public port's HTTP/1.1 server: strict parsing, every resource a client can hold bounded.

Why not a general-purpose framework: the container sits in front of MMS's
Java, which runs out of direct memory (and then answers ``/ping`` Unhealthy,
so SageMaker replaces the instance) when too many request bodies reach it at
once, and a client must not be able to hold memory or connections by going
slow. This server makes each bound explicit (``Limits``):

- requests are parsed by llhttp (``httptools``, what uvicorn uses): a
  request line or header that is not strict HTTP/1.1 is a 400, never passed on;
- a connection must finish its request head within ``header_timeout_s`` and
  its body within ``body_timeout_s``; an idle keep-alive connection is closed
  after ``idle_timeout_s``; at most ``max_connections`` are open at once;
- a body larger than ``max_body_bytes`` is answered 413 without being read;
- a body larger than ``SMALL_BODY`` is read only once its whole declared size
  is reserved in the ``receiving`` budget, so slow senders of large bodies
  hold at most that much memory together (the rest wait, then get 503);
  until then a read takes at most ``HEAD_READ`` bytes from a connection, so
  what arrives right behind a head waits in the socket, not in memory;
- the handler (the front) reserves every complete body in a second budget
  before it goes to MMS (``Front``), so what Java holds is bounded too.

One request per connection is handled at a time (pipelined requests wait,
in order); a handler runs as its own task, so it can be cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

from torch_mme.errors import (
    BadRequest,
    InternalServerError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    ServingError,
    TooManyConnections,
)

log = logging.getLogger("torch_mme.runtime.httpserver")

SMALL_BODY = 64 * 2**10
"""Bodies up to this size are read at once; larger ones first reserve room in the receiving budget."""
MAX_HEAD_BYTES = 64 * 2**10
HEAD_READ = 16 * 2**10
"""Most bytes one read takes from a connection that holds no reservation (a head, a small body).

What a read takes is in memory before the parser knows whether the body is
large, so this bounds what a connection can push in unreserved: a client that
sends a large body right behind its head waits in its socket, not in our
memory. Reads into a reserved body take ``RESERVED_READ``."""
RESERVED_READ = 256 * 2**10
MAX_HEADERS = 100
MAX_PIPELINED = 16
"""Complete requests a connection may have waiting behind the one being answered."""
LINGER_S = 2.0
"""After refusing a body (413, 503), how long its bytes are read and dropped, so the client sees the answer."""

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


@dataclass
class Request:
    method: str
    path: str
    """The raw path, still percent-encoded (the router decodes each segment)."""
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    keep_alive: bool = True
    http10: bool = False
    receiving: int = 0
    """Bytes this request holds in the server's receiving budget until it is answered."""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def json_response(status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload).encode()
    return Response(status, [("Content-Type", "application/json"), *(headers or [])], body)


def error_response(error: ServingError, headers: list[tuple[str, str]] | None = None) -> Response:
    """Every error this server or the front answers itself: one line of JSON, MMS's shape (``errors``)."""
    return Response(error.status, [("Content-Type", "application/json"), *(headers or [])], error.body())


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0
    max_connections: int = 1024
    receive_budget_bytes: int = 24 * 2**20
    queue_timeout_s: float = 10.0
    max_queued: int = 256


class QueueFull(Exception):
    """No room in a budget within the wait allowed, or too many already waiting: answer 503."""


class ByteBudget:
    """Bytes reserved by requests, first come first served; a request larger than the whole budget takes all of it.

    Waiting is bounded twice: at most ``max_waiters`` wait at once (more are refused at
    once) and each waits at most ``timeout_s``. Both refusals raise ``QueueFull``.
    """

    def __init__(self, capacity: int, max_waiters: int, timeout_s: float) -> None:
        self.capacity = capacity
        self.max_waiters = max_waiters
        self.timeout_s = timeout_s
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def _size(self, n: int) -> int:
        return max(1, min(n, self.capacity))

    async def acquire(self, n: int) -> int:
        """Reserve ``n`` bytes (returns what to release)."""
        granted = self.try_acquire(n)
        if granted:
            return granted
        n = self._size(n)
        if len(self._waiters) >= self.max_waiters:
            raise QueueFull(f"{len(self._waiters)} requests are already waiting")
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except asyncio.TimeoutError:
            if future.done():  # granted just as the wait ended: keep it
                return n
            self._waiters.remove(entry)
            self._grant()
            raise QueueFull(f"no room within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            if future.done():
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._grant()
            raise
        return n

    def try_acquire(self, n: int) -> int:
        """Reserve ``n`` bytes now if there is room and nobody waits (returns what to release), else 0."""
        n = self._size(n)
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return n
        return 0

    def release(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, future = self._waiters.popleft()
            if not future.done():
                self.used += n
                future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class HttpServer:
    """Serves ``handler`` on a listening socket with ``limits``; ``start`` then ``close``."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self.receiving = ByteBudget(limits.receive_budget_bytes, limits.max_queued, limits.queue_timeout_s)
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self.read_buffer = memoryview(bytearray(RESERVED_READ))
        """One buffer for every connection's reads: the loop hands each read to the parser before the next."""

    async def start(self, sock) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parse, bound, queue complete requests, answer them in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.on_expiry: ServingError | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.closed = False
        self.discarding = False
        self.pending: collections.deque[Request] = collections.deque()
        self.worker: asyncio.Task | None = None
        self.reading = True
        self.reserving = False
        self.reserve_task: asyncio.Task | None = None
        self.deferred: Response | None = None
        """A refusal found while an answer was being prepared: sent after it, then the connection closes."""
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self._reset_message()

    def _reset_message(self) -> None:
        if getattr(self, "reserved", 0):  # never dropped: a reservation goes with its request or back to the budget
            self.server.receiving.release(self.reserved)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.reserved = 0
        self.in_message = False
        self.head_done = False

    # --- the connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.limits.max_connections:
            log.warning("refusing a connection: %d are open (TORCH_MME_MAX_CONNECTIONS)", len(self.server.connections))
            self._write_response(
                error_response(TooManyConnections("too many open connections"), [("Retry-After", "1")]),
                keep_alive=False,
            )
            self.close()
            return
        self.server.connections.add(self)
        self._set_timer(self.limits.idle_timeout_s, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reserve_task is not None and not self.reserve_task.done():
            self.reserve_task.cancel()  # its place in the queue goes to the next one
        self.closed = True
        self.server.connections.discard(self)
        self._drop_timer()
        if self.linger is not None:
            self.linger.cancel()  # gone already: nothing to linger for
            self.linger = None
        self._release_receiving()
        self._drained.set()

    def close(self, abort: bool = False) -> None:
        """Close (after what is buffered is written), or ``abort``: drop it, for a client that does not read."""
        if not self.closed:
            self.closed = True
            self._drop_timer()
            self._release_receiving()
            if self.transport is not None:
                if abort:
                    self.transport.abort()
                else:
                    self.transport.close()

    def _release_receiving(self) -> None:
        """Give back the receiving budget this connection holds: the body being read and any request not answered."""
        if self.reserved:
            reserved, self.reserved = self.reserved, 0
            self.server.receiving.release(reserved)
        while self.pending:
            request = self.pending.popleft()
            if request.receiving:
                self.server.receiving.release(request.receiving)

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        # a reserved body, or bytes read only to be dropped, take big reads
        big = self.reserved or self.discarding
        return self.server.read_buffer[: RESERVED_READ if big else SMALL_BODY if self.head_done else HEAD_READ]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes])  # the parser copies what it keeps

    def data_received(self, data: bytes | memoryview) -> None:
        if self.discarding or self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.pending or self.worker is not None:
                self.discarding = True  # the request is answered (Connection: close); what follows is not HTTP/1.1
            else:
                self._refuse(BadRequest("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self.discarding and not self.closed:
                self._refuse(BadRequest(f"malformed HTTP request: {_short(exc)}"))

    # --- timers ----------------------------------------------------------------------------------
    def _set_timer(self, seconds: float, on_expiry: ServingError | None) -> None:
        """Move the connection's one deadline (``on_expiry``: the answer then, None: just close).

        A request moves it three times (head, body, idle); the loop's timer is re-armed only when the new
        deadline is earlier than the one armed, and an armed timer that finds a later deadline re-arms itself.
        """
        deadline = self.loop.time() + seconds
        self.deadline, self.on_expiry = deadline, on_expiry
        if self.timer is None or self.timer.when() > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self.deadline = None  # an armed timer finds no deadline and stops

    def _drop_timer(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if deadline > self.loop.time():
            self.timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self.deadline = None
        self._expired(self.on_expiry)

    def _expired(self, answer: ServingError | None) -> None:
        if answer is None or self.worker is not None:
            self.close()  # idle keep-alive connection (or the answer in progress closes it)
        else:
            self._refuse(answer)

    # --- parser callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_message()
        self.in_message = True
        self._message_timer()

    def _message_timer(self) -> None:
        """The deadline of the request being received: its head, then its body (none while one is answered)."""
        if self.worker is not None:
            return
        if not self.head_done:
            what, seconds = "head", self.limits.header_timeout_s
        else:
            what, seconds = "body", self.limits.body_timeout_s
        self._set_timer(seconds, RequestTimeout(f"request {what} not received within {seconds:g} s"))

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if len(self.headers) >= MAX_HEADERS:
            raise httptools.HttpParserError(f"more than {MAX_HEADERS} headers")
        try:
            self.headers.append((name.decode("ascii"), value.decode("ascii")))
        except UnicodeDecodeError:
            raise httptools.HttpParserError("a header holds a character that is not ASCII") from None

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError(f"request head larger than {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self.head_done = True
        length, encoded, expects = None, False, False
        for key, value in self.headers:  # one pass: the three headers the body's reading depends on
            lower = key.lower()
            if lower == "content-length":
                length = value if length is None else length
            elif lower == "transfer-encoding":
                encoded = True
            elif lower == "expect":
                expects = expects or value.lower() == "100-continue"
        declared = int(length) if length is not None and length.isdigit() else None
        chunked = declared is None and encoded
        if declared is not None and declared > self.limits.max_body_bytes:
            self._refuse_too_large()
            return
        needed = declared if declared is not None else (self.limits.max_body_bytes if chunked else 0)
        if needed > SMALL_BODY and (granted := self.server.receiving.try_acquire(needed)):
            self.reserved = granted
            if expects:
                self._write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._message_timer()
        elif needed > SMALL_BODY:
            self._cancel_timer()  # waiting for room has its own bound (the budget's queue timeout)
            self._pause_reading()
            self.reserving = True
            self.reserve_task = self.loop.create_task(self._reserve_and_read(needed, expects))
        else:
            if expects and needed:
                self._write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._message_timer()

    async def _reserve_and_read(self, needed: int, expects: bool) -> None:
        try:
            self.reserved = await self.server.receiving.acquire(needed)
        except QueueFull as exc:
            self.reserving = False
            self._refuse(ServiceUnavailable(f"server busy: {exc}; retry"), [("Retry-After", "1")])
            return
        self.reserving = False
        if self.closed:
            self._release_receiving()
            return
        if self.in_message:
            if expects:
                self._write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._message_timer()
        if self.worker is None:
            self._resume_reading()

    def on_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > self.limits.max_body_bytes:
            self._refuse_too_large()
            raise httptools.HttpParserError("body too large")  # stops this feed; the answer is sent
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.reserve_task is not None and not self.reserve_task.done():
            self.reserve_task.cancel()  # the body arrived in the same read: no room to wait for (ByteBudget undoes it)
            self.reserving = False
        self.reserve_task = None
        if len(self.pending) >= MAX_PIPELINED:
            self._reset_message()  # gives back what this one reserved; those queued are still answered
            self._refuse(BadRequest(f"more than {MAX_PIPELINED} pipelined requests"))
            raise httptools.HttpParserError("stop")  # ends this read; the refusal follows the queued answers
        if self.reserved > max(self.body_bytes, 1):  # chunked: the limit was reserved, the body is known now
            self.server.receiving.release(self.reserved - max(self.body_bytes, 1))
            self.reserved = max(self.body_bytes, 1)
        raw = self.url
        path, _, query = raw.partition(b"?")
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=self.headers,
            body=self.body[0] if len(self.body) == 1 else b"".join(self.body),
            keep_alive=self.parser.should_keep_alive() and not self.parser.should_upgrade(),
            http10=self.parser.get_http_version() == "1.0",
            receiving=self.reserved,
        )
        self.reserved = 0  # the request holds it now
        self._reset_message()
        self.pending.append(request)
        self._cancel_timer()
        self._pause_reading()  # one request at a time: a pipelined one waits in the socket, holding nothing
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer_pending())

    # --- answering -------------------------------------------------------------------------------
    async def _answer_pending(self) -> None:
        try:
            while self.pending and not self.closed:
                request = self.pending.popleft()
                keep_alive = request.keep_alive
                try:
                    response = await self.server.handler(request)
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    response = error_response(InternalServerError("the server failed to answer"))
                finally:
                    if request.receiving:
                        self.server.receiving.release(request.receiving)
                if self.closed:
                    return
                if keep_alive and request.http10:  # a 1.0 client assumes a close unless told otherwise
                    response.headers.append(("Connection", "keep-alive"))
                self._write_response(response, keep_alive, head_only=request.method == "HEAD")
                if not keep_alive:
                    self.close()
                    return
                if not self._drained.is_set():
                    try:
                        await asyncio.wait_for(self._drained.wait(), self.limits.idle_timeout_s)
                    except asyncio.TimeoutError:
                        log.warning("closing a connection whose client does not read its answers")
                        self.close(abort=True)
                        return
        finally:
            self.worker = None
        if self.deferred is not None and not self.closed:
            self._send_and_linger(self.deferred)
            return
        if not self.closed:
            if self.in_message:
                self._message_timer()
            else:
                self._set_timer(self.limits.idle_timeout_s, None)
            if not self.in_message or not self.reserving:
                self._resume_reading()

    def _write_response(self, response: Response, keep_alive: bool, head_only: bool = False) -> None:
        reason = REASONS.get(response.status, "Unknown")
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in response.headers]
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.transport is not None and not self.transport.is_closing():
            if head_only:  # HEAD: the length of the body, not the body
                self.transport.write(head)
            elif len(response.body) < 16384:
                self.transport.write(head + response.body)
            else:
                self.transport.writelines([head, response.body])

    def _write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- refusing --------------------------------------------------------------------------------
    def _refuse_too_large(self) -> None:
        megabytes = self.limits.max_body_bytes / 2**20
        self._refuse(PayloadTooLarge(f"request body is larger than {megabytes:g} MiB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"))

    def _refuse(self, error: ServingError, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer an error now and close; the rest of what the client sends is read and dropped a while,
        so it sees this answer rather than a reset."""
        if self.closed or self.discarding:
            return
        self.discarding = True
        response = error_response(error, headers)
        if self.worker is not None:  # answers of complete requests go first; this one after them
            self.deferred = response
            self._cancel_timer()
            return
        self._send_and_linger(response)

    def _send_and_linger(self, response: Response) -> None:
        self._release_receiving()
        self._write_response(response, keep_alive=False)
        self._resume_reading()
        if self.transport is not None and self.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()
        self._drop_timer()
        self.linger = self.loop.call_later(LINGER_S, self.close, True)  # unread by then: dropped

    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.closed:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.closed:
            self.reading = True
            self.transport.resume_reading()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
