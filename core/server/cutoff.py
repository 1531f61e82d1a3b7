"""Requests still running when the shutdown grace period ends: each is cut here with a proper
ending and one log line.

Left to uvicorn, the end of the grace period cancels every request task from outside: a
stream just stops (no terminal event: a client cannot tell a cut stream from a finished one)
and the log gets one CancelledError traceback per request. Cutoff cancels each request from
inside the app instead, a moment earlier, and then ends its response: a stream with OpenAI's
error event and [DONE] (as vLLM ends a stream that fails midway), a request with no response
yet with a 503. Cancelling the handler aborts its engine requests, as a client leaving does.
"""

import logging

import anyio

from .http import error_response
from .protocol import RequestError
from .responses import SSE_DONE, sse

log = logging.getLogger("llmtool.server")


class Cutoff:
    """The requests in flight, and the switch that cuts them (call on the event loop)."""

    def __init__(self):
        self._running: set[anyio.CancelScope] = set()

    def cut(self) -> int:
        """Cancel every request in flight; returns how many there were."""
        running = list(self._running)
        for scope in running:
            scope.cancel()
        return len(running)


class CutoffMiddleware:
    def __init__(self, app, cutoff: Cutoff):
        self.app = app
        self.cutoff = cutoff

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = is_stream = False

        async def watch(message) -> None:
            nonlocal started, complete, is_stream
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers") or [])
                is_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        with anyio.CancelScope() as cancel_scope:
            self.cutoff._running.add(cancel_scope)
            try:
                await self.app(scope, receive, watch)
            finally:
                self.cutoff._running.discard(cancel_scope)
        if not cancel_scope.cancelled_caught or complete:
            return
        kind = "stream" if is_stream else "response" if started else "request"
        log.warning("shutdown grace period over: %s %s cut (%s)", scope["method"], scope["path"], kind)
        error = RequestError(
            "The server is shutting down and its grace period for in-flight requests is over.",
            None,
            "server_shutting_down",
            status=503,
        )
        if not started:
            await error_response(error, {"Connection": "close"})(scope, receive, send)
        elif is_stream:
            await send(
                {"type": "http.response.body", "body": sse(error.body()) + SSE_DONE, "more_body": False}
            )
        else:  # a non-streaming body is sent in one piece, so this is hardly reachable
            await send({"type": "http.response.body", "body": b"", "more_body": False})
