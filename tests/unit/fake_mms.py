"""MMS's model routes in-process, for the front's and the lifecycle's unit tests (the real MMS is the
integration tests'): the answers MMS gives, holds that stop a call until a test lets it go, and a record of
what MMS could not have survived (two operations on one name at once, a request whose model is deleted
under it)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import unquote

from handler import timing
from torch_mme import load_report
from torch_mme.runtime.httpserver import Response


def mms_error(status: int, kind: str, message: str) -> Response:
    """MMS pretty-prints its errors over several lines."""
    body = json.dumps({"code": status, "type": kind, "message": message}, indent=2).encode()
    return Response(status, [("Content-Type", "application/json")], body)


@dataclass
class Hold:
    """A call that waits: ``entered`` once it reached MMS, answered once ``release`` is set."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class FakeMms:
    """Stands for ``Upstream``: ``request(method, path, headers, body, timeout)`` answered as MMS would."""

    def __init__(self, run_dir: str = "") -> None:
        self.run_dir = run_dir
        self.models: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.problems: list[str] = []
        """What the real MMS would have got wrong: a second operation on a name mid-operation, a request
        in flight when its model is deleted ('Unexpected job', never answered)."""
        self.register_answers: dict[str, list[tuple[int, dict | None]]] = {}
        """Per name, the next register answers: a status and the load report the handler writes first."""
        self.holds: dict[tuple[str, str], Hold] = {}
        self.yields = 0
        """Event-loop turns each call takes (a stress test varies them), besides a hold."""
        self._operating: set[str] = set()
        self._invoking: dict[str, int] = {}

    def hold(self, method: str, path: str) -> Hold:
        hold = self.holds[(method, path)] = Hold()
        return hold

    async def _pause(self, method: str, path: str) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)
        hold = self.holds.get((method, path))
        if hold is not None:
            hold.count += 1
            hold.entered.set()
            await hold.release.wait()

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        timeout: float | None = None,
        waiters: set[asyncio.Future] | None = None,
    ) -> Response:
        if waiters is None:
            return await self._answer(method, path, body)
        # as ``Upstream``: the answer's future is in ``waiters`` while awaited; an exception set on it ends the wait
        answer = asyncio.get_running_loop().create_future()
        call = asyncio.ensure_future(self._answer(method, path, body))

        def settle(done: asyncio.Future) -> None:
            if answer.done() or done.cancelled():
                return
            if done.exception() is not None:
                answer.set_exception(done.exception())
            else:
                answer.set_result(done.result())

        call.add_done_callback(settle)
        waiters.add(answer)
        try:
            return await answer
        finally:
            waiters.discard(answer)
            call.cancel()

    async def _answer(self, method: str, path: str, body: bytes) -> Response:
        self.calls.append((method, path))
        parts = path.split("?", 1)[0].split("/")
        if path == "/ping":
            return Response(200, [("Content-Type", "application/json")], b'{\n  "status": "Healthy"\n}\n')
        if method == "GET" and parts[1:] == ["models"]:
            models = [{"modelName": n, "modelUrl": f"/m/{n}"} for n in sorted(self.models)]
            return Response(200, [("Content-Type", "application/json")], json.dumps({"models": models}).encode())
        if method == "POST" and parts[1:] == ["models"]:
            return await self._register(json.loads(body))
        name = unquote(parts[2])
        if method == "POST" and parts[3:] == ["invoke"]:
            return await self._invoke(name, path, body)
        if method == "DELETE":
            return await self._operate(name, method, path, self._delete)
        if method == "GET":
            if name not in self.models:
                return mms_error(404, "ModelNotFoundException", f"Model not found: {name}")
            details = {"modelName": name, "workers": [{"status": "READY"}]}
            return Response(200, [("Content-Type", "application/json")], json.dumps(details, indent=2).encode())
        raise AssertionError(f"the front sent MMS {method} {path}")

    async def _operate(self, name: str, method: str, path: str, then) -> Response:
        if name in self._operating:
            self.problems.append(f"{method} {path} while another operation on {name} ran")
        self._operating.add(name)
        try:
            await self._pause(method, path)
            return then(name)
        finally:
            self._operating.discard(name)

    async def _register(self, payload: dict) -> Response:
        name = payload["model_name"]

        def register(name: str) -> Response:
            if name in self.models:
                return mms_error(409, "ConflictStatusException", f"Model {name} is already registered.")
            status, report = (self.register_answers.get(name) or [(200, None)]).pop(0)
            if report is not None:
                load_report.write(self.run_dir, name, report["code"], report["type"], report["message"])
            if status == 200:
                self.models.add(name)
                return Response(200, [("Content-Type", "application/json")], b'{\n  "status": "registered"\n}\n')
            if status == 507:
                self.models.add(name)  # MMS keeps a model that ran out of memory, with no workers
            return mms_error(status, "InternalServerException", "Failed to start workers")

        return await self._operate(name, "POST", "/models", register)

    def _delete(self, name: str) -> Response:
        if name not in self.models:
            return mms_error(404, "ModelNotFoundException", f"Model not found: {name}")
        if self._invoking.get(name):
            self.problems.append(f"DELETE {name} with {self._invoking[name]} request(s) in flight")
        self.models.discard(name)
        return Response(200, [("Content-Type", "application/json")], b'{"status": "unregistered"}')

    async def _invoke(self, name: str, path: str, body: bytes) -> Response:
        if name not in self.models:
            return mms_error(404, "ModelNotFoundException", f"Model not found: {name}")
        self._invoking[name] = self._invoking.get(name, 0) + 1
        try:
            await self._pause("POST", path)
        finally:
            self._invoking[name] -= 1
        headers = [("Content-Type", "application/json"), (timing.HEADER, timing.format_timing(0.0, 0.001, 1))]
        return Response(200, headers, body)
