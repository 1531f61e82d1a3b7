"""The FastAPI application: routes, API-key check, access log, HTTP metrics, error bodies.

Every error leaves as OpenAI's body {"error": {"message", "type", "param", "code"}}: ours
(RequestError), Starlette's (404 unknown route, 405) and unexpected ones (500).
"""

import hmac
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .chat import create_chat_completion
from .completions import create_completion
from .cutoff import Cutoff, CutoffMiddleware
from .http import ClientGone, error_response, plain_error
from .limits import BodyLimit
from .metrics import CONTENT_TYPE
from .protocol import RequestError
from .state import ServerState

access_log = logging.getLogger("llmtool.access")
log = logging.getLogger("llmtool.server")

_QUIET_PATHS = ("/health", "/metrics")  # polled by load balancers and scrapers: debug level only


def create_app(
    state: ServerState,
    on_ready: Callable[[ServerState], None] = lambda s: None,
    on_failure: Callable[[ServerState], None] = lambda s: None,
    cutoff: Cutoff | None = None,
) -> FastAPI:
    """The app; `cutoff` (run.py's) cuts the requests still running when the shutdown grace
    period ends."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading(on_ready, on_failure)  # the port is already bound: /health says 503
        yield
        await state.shutdown()

    app = FastAPI(title="llmtool", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    config = state.config

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(config.retry_after)} if error.status in (429, 503) else {}
        if getattr(error, "close_connection", False):  # a body left unread (limits.py)
            headers["Connection"] = "close"
        return error_response(error, headers or None)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = "Not found." if error.status_code == 404 else str(error.detail)
        return plain_error(error.status_code, f"{message} ({request.method} {request.url.path})")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return plain_error(500, f"Internal error: {error!r}", "internal_error")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await create_completion(state, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await create_chat_completion(state, request)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {
            "id": config.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "llmtool",
            "root": config.engine.model,
            "max_model_len": state.max_model_len or None,
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = state.health
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        if state.engine is not None:
            state.metrics.update_from_stats(state.engine.stats())
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/version")
    async def version() -> dict:
        from importlib.metadata import version as package_version

        return {"version": package_version("llmtool")}

    # Middleware runs outermost-last-added: access log and metrics see every response, the
    # 401s, CORS answers, 413s and shutdown cuts included.
    if config.api_key:
        app.add_middleware(ApiKeyCheck, api_key=config.api_key)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    app.add_middleware(CutoffMiddleware, cutoff=cutoff or Cutoff())
    app.add_middleware(AccessLog, state=state)
    return app


class ApiKeyCheck:
    """`Authorization: Bearer KEY` on /v1/*; /health, /metrics and /version stay open."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = RequestError("Incorrect or missing API key.", None, "invalid_api_key", status=401)
                await error_response(error, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """One concise line per request (method, path, status, duration to the last byte) and the
    HTTP status counter. Pure ASGI, so streaming and disconnects pass through untouched."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering, that is what the client sees

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe_http(status)
            path = scope["path"]
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
            client = scope.get("client")
            access_log.log(
                level,
                "%s %s %s %d %.0f ms",
                client[0] if client else "-",
                scope["method"],
                path,
                status,
                (time.perf_counter() - start) * 1000,
            )
