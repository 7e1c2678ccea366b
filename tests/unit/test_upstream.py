"""The front's client for MMS: a silent model server is a typed timeout, answered 504 in JSON."""

from __future__ import annotations

import asyncio
import json

import pytest

from torch_mme.runtime.front import Front
from torch_mme.runtime.httpserver import Request, Response
from torch_mme.runtime.upstream import Upstream, UpstreamError, UpstreamTimeout
from torch_mme.settings import Settings


def test_a_model_server_that_never_answers_is_an_upstream_timeout(tmp_path):
    path = str(tmp_path / "mms.sock")

    async def run() -> None:
        async def silent(reader, writer):
            await reader.read(1 << 16)
            await asyncio.sleep(5)

        server = await asyncio.start_unix_server(silent, path)
        upstream = Upstream(path)
        try:
            with pytest.raises(UpstreamTimeout, match="did not answer within"):
                await upstream.request("POST", "/models/m/invoke", body=b"[1]", timeout=0.2)
        finally:
            upstream.close()
            server.close()

    asyncio.run(run())


def test_the_front_answers_an_upstream_timeout_with_a_json_504(tmp_path):
    class Silent(Upstream):
        async def request(self, *args, **kwargs):
            raise UpstreamTimeout("the model server did not answer within 90 s")

    front = Front(Settings(models_root=str(tmp_path)), Silent(str(tmp_path / "mms.sock")))
    request = Request("POST", "/models/m/invoke", "", [("Content-Type", "application/json")], b"[1]")
    response = asyncio.run(front.handle(request))
    assert response.status == 504
    assert json.loads(response.body) == {
        "code": 504,
        "type": "ModelServerTimeout",
        "message": "the model server did not answer within 90 s",
    }


def test_ping_is_503_when_mms_is_gone_or_unhealthy(tmp_path):
    class Gone(Upstream):
        async def request(self, *args, **kwargs):
            raise UpstreamError("model server is not reachable: [Errno 111] Connection refused")

    class Unhealthy(Upstream):
        async def request(self, *args, **kwargs):
            return Response(200, [("Content-Type", "application/json")], b'{\n  "status": "Unhealthy"\n}\n')

    ping = Request("GET", "/ping", "", [])
    for upstream in (Gone(str(tmp_path / "s")), Unhealthy(str(tmp_path / "s"))):
        response = asyncio.run(Front(Settings(models_root=str(tmp_path)), upstream).handle(ping))
        assert response.status == 503
        assert json.loads(response.body)["status"] == "Unhealthy"


def test_the_front_answers_only_the_contracts_routes(tmp_path):
    class Recording(Upstream):
        calls: list = []

        async def request(self, method, path, *args, **kwargs):
            self.calls.append((method, path))
            return Response(200, [], b"{}")

    upstream = Recording(str(tmp_path / "s"))
    front = Front(Settings(models_root=str(tmp_path)), upstream)
    for method, path, status in [
        ("POST", "/models/", 404),
        ("PUT", "/models/m", 405),
        ("GET", "/predictions/m", 404),
        ("DELETE", "/models/m%0D%0AX", 400),
        ("GET", "/models/m%0A", 400),
        ("POST", "/models/a%20b/invoke", 400),
        ("GET", "//models", 404),
    ]:
        response = asyncio.run(front.handle(Request(method, path, "", [])))
        assert response.status == status, (method, path, response.body)
    assert upstream.calls == []


def test_bodies_mms_would_split_into_fields_and_unsafe_values_are_refused_before_mms(tmp_path):
    """Found by review: MMS's Netty splits form and multipart bodies into uncapped fields (Java ran out of
    heap), and values the MMS client refuses were a 500 with a traceback."""

    class Recording(Upstream):
        calls: list = []

        async def request(self, method, path, headers=None, body=b"", **kwargs):
            from torch_mme.runtime.upstream import check_request

            check_request(method, path, headers or [])
            self.calls.append((method, path))
            return Response(200, [], b"{}")

    upstream = Recording(str(tmp_path / "s"))
    front = Front(Settings(models_root=str(tmp_path)), upstream)
    cases = [
        ("POST", "/models/m/invoke", "", [("Content-Type", "application/x-www-form-urlencoded")], 415),
        ("POST", "/models/m/invoke", "", [("Content-Type", "multipart/form-data; boundary=x")], 415),
        ("POST", "/models/m/invoke", "", [("Content-Type", "application/json"), ("content-type", "text/csv")], 400),
        ("POST", "/models/m/invoke", "", [("X-Amzn-SageMaker-Custom-Attributes", "a" * 9000)], 400),
        ("GET", "/models", "limit=\u0663", [], 400),
        ("GET", "/models", "next_page_token=%C2%B2", [], 400),
    ]
    for method, path, query, headers, status in cases:
        response = asyncio.run(front.handle(Request(method, path, query, headers, b"a=1&b=2")))
        assert response.status == status, (headers, query, response.body)
        assert json.loads(response.body)["code"] == status
    assert upstream.calls == []


# --- the client's HTTP/1.1 against a real asyncio Unix-socket server ------------------------------------------


class ScriptedMMS:
    """A Unix-socket server that reads whole requests and answers each with the next scripted reply.

    A reply is raw bytes, then what to do with the connection: ``"keep"`` (wait for the next request),
    ``"close"`` (close it after the reply). ``connections`` counts accepted connections; ``requests`` records
    (connection number, request line, body).
    """

    def __init__(self, path: str, replies: list[tuple[bytes, str]]) -> None:
        self.path = path
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[tuple[int, str, bytes]] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> ScriptedMMS:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while self.replies:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed it
                lines = head.decode("latin-1").split("\r\n")
                length = next(int(v) for k, _, v in (x.partition(": ") for x in lines) if k.lower() == "content-length")
                self.requests.append((number, lines[0], await reader.readexactly(length)))
                reply, then = self.replies.pop(0)
                writer.write(reply)
                await writer.drain()
                if then == "close":
                    return
        finally:
            writer.close()


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def talk(path: str, replies: list[tuple[bytes, str]], calls: int, timeout: float = 30.0):
    """``calls`` invokes, one after the other, through one ``Upstream``; (results or exceptions, server, pool)."""

    async def run():
        async with ScriptedMMS(path, replies) as mms:
            upstream = Upstream(path)
            results = []
            try:
                for i in range(calls):
                    try:
                        # the hang guard: a client that waits for bytes that never come fails the test here
                        results.append(
                            await asyncio.wait_for(
                                upstream.request("POST", "/models/m/invoke", body=f"[{i}]".encode(), timeout=timeout),
                                10,
                            )
                        )
                    except UpstreamError as exc:
                        results.append(exc)
                    await asyncio.sleep(0.05)  # a closed connection's end reaches the client while it is pooled
                return results, mms, len(upstream._idle)
            finally:
                upstream.close()

    return asyncio.run(run())


def test_a_chunked_answer_is_joined_with_extensions_and_trailers_and_the_connection_reused(tmp_path):
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\n[1, \r\n"
        b"A\r\n2, 3, 4, 5\r\n"
        b"1\r\n]\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    results, mms, pooled = talk(str(tmp_path / "mms.sock"), [(chunked, "keep"), (ok(b"second"), "keep")], 2)
    first, second = results
    assert first.status == 200 and first.body == b"[1, 2, 3, 4, 5]"
    assert dict(first.headers) == {"Content-Type": "application/json"}  # no Transfer-Encoding passed on
    assert second.body == b"second"
    assert mms.connections == 1 and pooled == 1  # both on one kept-alive connection
    assert [line for _, line, _ in mms.requests] == ["POST /models/m/invoke HTTP/1.1"] * 2


def test_a_pooled_connection_mms_closed_is_replaced_and_the_request_sent_once_more(tmp_path):
    # MMS answers with keep-alive and then closes the idle connection: the next request finds it dead
    results, mms, pooled = talk(str(tmp_path / "mms.sock"), [(ok(b"one"), "close"), (ok(b"two"), "keep")], 2)
    assert [r.body for r in results] == [b"one", b"two"]
    assert mms.connections == 2 and pooled == 1
    assert [(n, body) for n, _, body in mms.requests] == [(1, b"[0]"), (2, b"[1]")]  # MMS saw each request once


def test_with_every_pooled_connection_closed_the_second_try_takes_a_fresh_one(tmp_path):
    # two requests at once pool two connections; MMS closes both while idle; the next request finds the
    # first dead and must not try the second, just as dead: its one retry is on a new connection
    path = str(tmp_path / "mms.sock")

    async def run():
        async with ScriptedMMS(path, [(ok(b"a"), "close"), (ok(b"b"), "close"), (ok(b"c"), "keep")]) as mms:
            upstream = Upstream(path)
            try:
                first = await asyncio.gather(*(upstream.request("POST", "/models/m/invoke", body=b"[0]") for _ in "ab"))
                await asyncio.sleep(0.1)  # both ends reach the client while the connections are pooled
                pooled_before = len(upstream._idle)
                third = await asyncio.wait_for(upstream.request("POST", "/models/m/invoke", body=b"[1]"), 10)
                return first, pooled_before, third, mms
            finally:
                upstream.close()

    first, pooled_before, third, mms = asyncio.run(run())
    assert sorted(r.body for r in first) == [b"a", b"b"] and pooled_before == 2
    assert third.status == 200 and third.body == b"c"
    assert mms.connections == 3 and [body for _, _, body in mms.requests].count(b"[1]") == 1


def test_an_answer_without_length_is_read_to_the_end_and_its_connection_not_pooled(tmp_path):
    to_eof = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + b"x" * 100_000
    results, mms, pooled = talk(str(tmp_path / "mms.sock"), [(to_eof, "close"), (ok(b"next"), "keep")], 2)
    assert results[0].status == 200 and results[0].body == b"x" * 100_000
    assert results[1].body == b"next"
    assert mms.connections == 2 and pooled == 1  # the first connection was not kept


@pytest.mark.parametrize(
    "cut",
    [
        ok(b"0123456789")[:-4],  # fewer bytes than its Content-Length
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-part",  # a chunk cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",  # no last chunk
        b"HTTP/1.1 200 OK\r\nContent-Le",  # the head cut short
    ],
    ids=["content-length", "chunk", "last-chunk", "head"],
)
def test_an_answer_cut_short_is_an_error_not_a_hang_and_is_not_sent_again(tmp_path, cut):
    # the first request pools a connection; MMS cuts its answer to the second on it short and closes
    replies = [(ok(b"one"), "keep"), (cut, "close"), (ok(b"never"), "keep")]
    results, mms, _ = talk(str(tmp_path / "mms.sock"), replies, 2)
    assert results[0].body == b"one"
    assert isinstance(results[1], UpstreamError) and not isinstance(results[1], UpstreamTimeout)
    assert "connection failed" in str(results[1])
    assert len(mms.requests) == 2  # MMS may have run it: not sent a second time


def test_an_answer_given_up_ends_its_wait_and_its_connection_and_the_next_request_gets_its_own_answer(tmp_path):
    """A restart sets an exception on the answers waiting on MMS (``Registry.abandon``): the wait ends at
    once, and the connection that still owes that answer is closed, never pooled for the next request."""
    path = str(tmp_path / "mms.sock")

    async def run():
        async with ScriptedMMS(path, [(ok(b"second"), "keep")]) as mms:
            original, accepted = mms._serve, []

            async def slow_first(reader, writer):
                accepted.append(writer)
                if len(accepted) == 1:
                    await asyncio.sleep(0.5)  # the first connection answers late
                await original(reader, writer)

            mms.server.close()
            mms.server = await asyncio.start_unix_server(slow_first, path)
            upstream = Upstream(path)
            waiters: set[asyncio.Future] = set()
            try:
                call = asyncio.ensure_future(upstream.request("POST", "/models/m/invoke", body=b"[0]", waiters=waiters))
                while not waiters:
                    await asyncio.sleep(0.01)
                next(iter(waiters)).set_exception(RuntimeError("abandoned"))
                with pytest.raises(RuntimeError, match="abandoned"):
                    await asyncio.wait_for(call, 2)
                assert waiters == set() and upstream._idle == []
                second = await asyncio.wait_for(upstream.request("POST", "/models/m/invoke", body=b"[1]"), 5)
                return second, mms, len(accepted)
            finally:
                upstream.close()

    second, mms, connections = asyncio.run(run())
    assert second.status == 200 and second.body == b"second"
    assert connections == 2  # the given-up connection was closed, not reused
    assert [body for _, _, body in mms.requests] == [b"[1]"]  # the first was never answered


def test_an_answer_with_bytes_beyond_it_is_taken_but_its_connection_is_not_pooled(tmp_path):
    """Found by review: bytes after a complete answer mean MMS's framing is off; the next request on that
    connection must not read them as its answer."""
    trailing = ok(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    results, mms, pooled = talk(str(tmp_path / "mms.sock"), [(trailing, "keep"), (ok(b"second"), "keep")], 2)
    assert [r.body for r in results] == [b"first", b"second"]
    assert mms.connections == 2 and pooled == 1


def test_a_chunk_that_does_not_end_with_crlf_is_an_error(tmp_path):
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, XX0\r\n\r\n"
    results, _, pooled = talk(str(tmp_path / "mms.sock"), [(bad, "close")], 1)
    assert isinstance(results[0], UpstreamError) and "CRLF" in str(results[0]) and pooled == 0


def test_a_request_still_connecting_can_be_abandoned(tmp_path):
    """Found by review: the answer's future is in ``waiters`` before the connection is made, so a restart's
    abandon reaches a request that has not reached MMS yet."""
    path = str(tmp_path / "mms.sock")

    async def run():
        async with ScriptedMMS(path, [(ok(b"never"), "keep")]) as mms:
            upstream = Upstream(path)  # nothing pooled: the request connects first
            waiters: set[asyncio.Future] = set()
            try:
                call = asyncio.ensure_future(upstream.request("POST", "/models/m/invoke", body=b"[0]", waiters=waiters))
                await asyncio.sleep(0)  # the request has started and is connecting
                assert len(waiters) == 1
                next(iter(waiters)).set_exception(RuntimeError("abandoned"))
                with pytest.raises(RuntimeError, match="abandoned"):
                    await asyncio.wait_for(call, 2)
                await asyncio.sleep(0.05)
                return mms.requests, upstream._idle
            finally:
                upstream.close()

    requests, idle = asyncio.run(run())
    assert requests == [] and idle == []  # never sent, never pooled
