"""What a client may send and how long it has: the request body's size and read time (an ASGI
middleware, so its 413 / 408 go through the app's error path, access log and metrics), and
the request headers' read time (uvicorn's h11 protocol, the only place that sees a request
before its headers are complete).

uvicorn by itself waits forever for headers that arrive slowly or not at all, and for a body
shorter than its Content-Length: each such connection is held open indefinitely (slowloris).
Every error here is OpenAI's error body, and the connection closes after it, since the
rest of what the client sends is not worth reading.

Not here: what the body must hold (body.py, protocol.py), per-request generation time
(--request-timeout, generation.py).
"""

import asyncio
import json

from .http import error_response
from .protocol import RequestError
from .responses import error_body


class BodyError(RequestError):
    """A body too large or too slow: answered, then the connection is closed unread."""

    close_connection = True


def body_too_large(max_bytes: int, size: int | None = None) -> BodyError:
    got = f" ({size:,} bytes)" if size is not None else ""
    return BodyError(
        f"The request body is too large{got}: this server accepts at most {max_bytes:,} bytes "
        "(--max-body-bytes).",
        None,
        "request_too_large",
        status=413,
    )


def body_timeout(seconds: float) -> BodyError:
    return BodyError(
        f"The request body did not arrive within {seconds:g} s of its headers (--body-timeout).",
        None,
        "request_timeout",
        status=408,
    )


class BodyLimit:
    """413 when Content-Length is over `max_bytes` (before reading a byte of it) or when the
    bytes received pass it (a chunked body); 408 when the whole body has not arrived
    `timeout` seconds after the headers. Both are raised from `receive`, so the handler
    reading the body answers them like any RequestError."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            error = body_too_large(self.max_bytes, declared)
            await error_response(error, {"Connection": "close"})(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout  # the clock timeout_at reads
        received = 0
        body_done = False

        async def guarded_receive():
            nonlocal received, body_done
            if body_done:  # later calls wait for a disconnect: no deadline on those
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise body_timeout(self.timeout) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise body_too_large(self.max_bytes)
            body_done = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # h11 has already refused a malformed one; be safe anyway
                return None
    return None


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response as bytes, for the protocol level (no ASGI app yet)."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps(error_body(message, kind, None, code), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def h11_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline on request headers: `header_timeout` seconds from
    the connection's start (or, on a kept-alive connection, from the next request's first
    byte) to the end of the headers. A connection that sent nothing is closed quietly, one
    that sent part of a request gets a 408. uvicorn's own 400 for a malformed request
    becomes OpenAI's error body."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = False  # part of the next request's head has arrived
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # waiting for a request's head
                self._header_bytes = True
                if self._header_timer is None:
                    self._arm_header_timer()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is complete (or broken)
                self._disarm_header_timer()
                self._header_bytes = False

        def on_response_complete(self) -> None:
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # Answered before its body arrived (401, 404 on a GET with a body): the rest
                # is not worth reading, and a client dripping it must not hold the connection.
                self.transport.close()
                return
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
                self.transport.close()  # mid-response: another response cannot be written
                return
            self.transport.write(
                raw_error(
                    400,
                    "Bad Request",
                    "Invalid HTTP request: malformed request line, headers or body framing.",
                    "invalid_http_request",
                )
            )
            self.transport.close()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._header_bytes:
                self.transport.write(
                    raw_error(
                        408,
                        "Request Timeout",
                        f"The request headers did not arrive within {header_timeout:g} s (--header-timeout).",
                        "request_timeout",
                    )
                )
            self.transport.close()

    return GuardedH11Protocol
