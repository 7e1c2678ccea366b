"""The public port's HTTP server on its own (no MMS): framing, bounds, timeouts, budgets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from torch_mme.runtime.httpserver import ByteBudget, HttpServer, Limits, QueueFull, Request, Response
from torch_mme.runtime.upstream import UnsafeRequest, check_request


class Running:
    """An HttpServer with an echo handler on a free 127.0.0.1 port, in a loop of its own thread."""

    def __init__(self, limits: Limits, delay_s: float = 0.0) -> None:
        self.limits = limits
        self.delay_s = delay_s
        self.seen: list[Request] = []

    async def handler(self, request: Request) -> Response:
        self.seen.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return Response(
            200, [("Content-Type", "text/plain")], f"{request.method} {request.path} ".encode() + request.body
        )

    def __enter__(self):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(self.handler, self.limits)
        self.loop.run_until_complete(self.server.start(self.sock))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def exchange(port: int, data: bytes, timeout: float = 5.0, until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if not until_close and b"\r\n\r\n" in chunk:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


LIMITS = Limits(max_body_bytes=2**20, header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=0.5)


def test_a_request_is_answered_and_an_idle_connection_closed():
    with Running(LIMITS) as running:
        started = time.monotonic()
        answer = exchange(running.port, b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"POST /a abc")
        assert time.monotonic() - started < 3  # closed by the idle timeout, not the client's
        assert running.seen[0].query == "b=1"


def test_pipelined_requests_are_answered_in_order():
    with Running(LIMITS, delay_s=0.05) as running:
        data = b"".join(f"POST /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(5))
        answer = exchange(running.port, data)
        bodies = [part.split(b"\r\n\r\n", 1)[1][:6] for part in answer.split(b"HTTP/1.1 200 OK")[1:]]
        assert bodies == [f"POST /{i} {i}".encode()[:6] for i in range(5)]


def test_chunked_bodies_are_joined_and_expect_continue_is_honoured():
    with Running(LIMITS) as running:
        chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        assert exchange(running.port, chunked).endswith(b"POST /c abcde")
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"ok")
            assert sock.recv(1000).endswith(b"POST /e ok")


def test_a_body_over_the_limit_is_413_without_the_handler():
    with Running(LIMITS) as running:
        answer = exchange(running.port, b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\nxx")
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b'"PayloadTooLarge"' in answer
        chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
        answer = exchange(running.port, b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert running.seen == []


def test_slow_heads_and_bodies_get_408_and_are_closed():
    with Running(LIMITS) as running:
        started = time.monotonic()
        answer = exchange(running.port, b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert answer.startswith(b"HTTP/1.1 408 ") and b"head" in answer
        answer = exchange(running.port, b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 408 ") and b"body" in answer
        assert time.monotonic() - started < 4.5
        assert running.seen == []


def test_malformed_requests_and_non_ascii_headers_are_400():
    with Running(LIMITS) as running:
        for data in (
            b"GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \u00e9\r\n\r\n".encode(),
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ):
            answer = exchange(running.port, data)
            assert answer.startswith(b"HTTP/1.1 400 "), (data, answer)
            assert b'"type": "BadRequest"' in answer
        assert running.seen == []


def test_head_gets_a_length_and_no_body_and_junk_after_a_request_waits_for_its_answer():
    with Running(LIMITS, delay_s=0.3) as running:
        answer = exchange(running.port, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        first, _, second = answer.partition(b"HTTP/1.1 200 OK\r\n")[2].partition(b"\r\n\r\n")
        assert b"Content-Length: 8" in first  # len(b"HEAD /h ")
        assert second.startswith(b"HTTP/1.1 200 OK")  # the next answer starts right after the head
        answer = exchange(running.port, b"POST /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nokNOT HTTP AT ALL\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"POST /ok ok" in answer
        assert b"HTTP/1.1 400 " in answer  # the refusal comes after the answer it followed


def test_the_receiving_budget_is_given_back_when_a_client_goes_away():
    with Running(LIMITS) as running:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", running.port)) as sock:
                sock.sendall(b"POST /b HTTP/1.1\r\nContent-Length: 500000\r\n\r\n" + b"x" * 100000)
                time.sleep(0.1)
                assert running.server.receiving.used == 500000
        time.sleep(0.2)
        assert running.server.receiving.used == 0
        assert running.server.connections == set()


def test_the_connection_cap_answers_503():
    with Running(Limits(max_body_bytes=100, max_connections=2)) as running:
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
        time.sleep(0.1)
        answer = exchange(running.port, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        for sock in held:
            sock.close()


def test_the_budget_serves_in_order_and_bounds_its_queue():
    # a request larger than the whole budget takes all of it, once the rest is free
    async def ordered() -> list[str]:
        budget = ByteBudget(capacity=10, max_waiters=3, timeout_s=1.0)
        order: list[str] = []
        first = await budget.acquire(6)

        async def take(name: str, n: int) -> None:
            held = await budget.acquire(n)
            order.append(name)
            await asyncio.sleep(0.01)
            budget.release(held)

        tasks = [asyncio.create_task(take("big", 50)), asyncio.create_task(take("small", 1))]
        await asyncio.sleep(0.05)
        assert order == []  # "small" would fit, but waits behind "big": first come, first served
        budget.release(first)
        await asyncio.gather(*tasks)
        assert budget.used == 0
        return order

    assert asyncio.run(ordered()) == ["big", "small"]

    async def bounded() -> None:
        budget = ByteBudget(capacity=10, max_waiters=1, timeout_s=0.1)
        await budget.acquire(10)
        waiter = asyncio.create_task(budget.acquire(1))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="already waiting"):
            await budget.acquire(1)
        with pytest.raises(QueueFull, match="no room within"):
            await waiter
        assert budget.waiting == 0 and budget.used == 10

    asyncio.run(bounded())


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("DELETE", "/models/x HTTP/1.1\r\nHost: y\r\n\r\nPOST /models", []),
        ("GET", "/models/a b", []),
        ("GET", "/models/\u00e9", []),
        ("GET", "/ping", [("X-A", "b\r\nX-Injected: 1")]),
        ("GET", "/ping", [("X-A\r\n", "b")]),
        ("GET", "/ping", [("X-A", "caf\u00e9")]),
        ("GET /x HTTP/1.1\r\n", "/ping", []),
    ],
)
def test_the_mms_client_refuses_what_could_be_read_as_a_second_request(method, path, headers):
    with pytest.raises(UnsafeRequest):
        check_request(method, path, headers)


def test_the_mms_client_accepts_what_the_front_sends():
    check_request("POST", "/models/m-1.v2_x/invoke", [("Content-Type", "application/json; q=0.5"), ("Accept", "*/*")])


def test_bodies_reserved_in_the_read_that_completes_them_give_the_budget_back():
    """Found by review: a >64 KiB body arriving with its head leaked its reservation on keep-alive connections."""
    with Running(LIMITS) as running:
        body = b"x" * 100_000
        request = b"POST /b HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + body
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            for _ in range(20):
                sock.sendall(request)
                answer = b""
                while not answer.endswith(body):
                    answer += sock.recv(262144)
        time.sleep(0.2)
        assert running.server.receiving.used == 0
        chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        assert exchange(running.port, chunked).endswith(b"POST /c hello")
        assert running.server.receiving.used == 0


def test_a_client_that_never_reads_its_answers_is_closed():
    with Running(LIMITS) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = b"POST /p HTTP/1.1\r\nContent-Length: 60000\r\n\r\n" + b"y" * 60000
            sock.settimeout(0.5)
            sent = 0
            deadline = time.monotonic() + 8
            closed = False
            while time.monotonic() < deadline:
                try:
                    sent += sock.send(request)
                except TimeoutError:
                    time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if not running.server.connections:
                    closed = True
                    break
        assert closed, "the server kept a connection whose client never read"


def test_an_upgrade_request_is_answered_and_closed_and_pipelining_is_capped():
    with Running(LIMITS) as running:
        answer = exchange(running.port, b"GET /u HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0")
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in answer
        assert b"400" not in answer.split(b"\r\n", 1)[0] and answer.count(b"HTTP/1.1 ") == 1
        many = b"GET /x HTTP/1.1\r\n\r\n" * 40
        answer = exchange(running.port, many)
        assert answer.count(b"HTTP/1.1 200 OK") <= 17
        assert b"pipelined requests" in answer


def test_an_http10_keep_alive_client_is_told_the_connection_stays():
    with Running(LIMITS) as running:
        answer = exchange(running.port, b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", until_close=False)
        assert b"Connection: keep-alive" in answer
