"""The tests' HTTP helpers: a keep-alive client that counts resent requests, and the short-JSON-error check.

The reliability tier and the soak (``tests/support/soak.py``, which ``bench/soak.py`` runs for longer) use them.
"""

from __future__ import annotations

import http.client
import json
import re

_TRACEBACK = re.compile(rb'Traceback \(most recent call last\)|File \\?"[^"\n]*\\?", line \d+')
"""What a Python traceback prints (also JSON-escaped): its header, or a frame line."""


def json_error_problem(status: int, body: bytes) -> str | None:
    """Why ``body`` is not a short one-line JSON error for ``status`` (``{"code", "message"}``, no traceback)."""
    if len(body) >= 4096:
        return "longer than 4 kB"
    if _TRACEBACK.search(body):  # the words alone may be the client's own (a CSV cell 'Traceback', quoted back)
        return "carries a traceback"
    try:
        payload = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(payload, dict) or payload.get("code") != status or not payload.get("message"):
        return "not {code, message} for this status"
    if "\n" in body.decode(errors="replace").strip():
        return "more than one line"
    return None


class KeepAliveClient:
    """A keep-alive HTTP/1.1 client (one connection), reconnecting after errors.

    A request whose connection the server closed is sent once more on a new one (a keep-alive connection
    closed while idle is normal); ``resent`` counts them, so a caller that must see every answer can check.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.resent = 0

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                chunked = body is not None and not isinstance(body, (bytes, bytearray))  # an iterable: chunked encoding
                self.conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                self.close()  # a keep-alive connection the server closed between requests: retry once
                if attempt:
                    raise
                self.resent += 1
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
