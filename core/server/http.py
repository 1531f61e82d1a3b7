"""HTTP plumbing shared by the endpoints: JSON bodies, OpenAI error responses, SSE responses
that stop (and so abort their requests) when the client goes away, and the same for
non-streaming handlers."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .body import decode_json
from .protocol import RequestError, from_validation_error
from .responses import error_body

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Responses that must not be cached or buffered by a proxy on the way (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed the connection before the response was ready."""


class ErrorJSON(JSONResponse):
    """An error body in ASCII: a message that quotes the client's input (a model name, a
    route) may hold a lone surrogate, which UTF-8 cannot encode; escaped, it always can."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def error_response(error: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return ErrorJSON(error.body(), status_code=error.status, headers=headers)


def plain_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ErrorJSON(error_body(message, kind, None, code), status_code=status)


# Bytes: smaller bodies parse on the event loop in well under a millisecond. A larger one goes
# to a worker thread, whose Python-level checks hand the GIL back every switch interval.
_INLINE_BODY = 256 * 1024


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body validated as `model`; RequestError (400) for anything else."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # gone mid-body (or its HTTP framing broke): nobody to answer
        raise ClientGone() from None
    if len(raw) <= _INLINE_BODY:
        return _validate(raw, model)
    return await asyncio.to_thread(_validate, raw, model)


def _validate(raw: bytes, model: type[M]) -> M:
    data = decode_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None
    except RecursionError:  # decode_json bounds the depth; this is the last line of defence
        raise RequestError("The request body nests too deeply.", None, "invalid_json") from None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone()
    return task.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(StreamingResponse):
    """Server-sent events that always listen for the client leaving: the body iterator is
    cancelled at once (its finally aborts the requests), not at the next failed write."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]):
        super().__init__(content, headers=SSE_HEADERS)

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the socket went away mid-write
                    pass
                group.cancel_scope.cancel()

            async def listen() -> None:
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(listen)


def no_content() -> Response:
    return Response(status_code=204)
