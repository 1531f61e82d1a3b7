"""Run the server: bind first, load in the background, stop gracefully on SIGTERM/SIGINT.

SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish for up to
`shutdown_grace` seconds, cuts what is left (a stream ends with an error event, cutoff.py),
shuts the engine down and returns, so the process exits 0; a second signal cuts the grace
period short, a third stops waiting for anything.
"""

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

from ..errors import LlmtoolError
from .config import ServerConfig
from .cutoff import Cutoff
from .limits import h11_protocol
from .state import ServerState

log = logging.getLogger("llmtool.server")


def bind(host: str, port: int) -> socket.socket:
    """Listen now, so a taken port is one clear error and /health answers from the start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it on Linux. Without it the first token chunk, written right
    # after the headers, waited for the client's delayed ACK (Nagle): 40 ms on every TTFT.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LlmtoolError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    config: ServerConfig,
    on_listening: Callable[[ServerState], None] = lambda s: None,
    on_ready: Callable[[ServerState], None] = lambda s: None,
) -> None:
    """Serve until a signal; raises LlmtoolError if the model failed to load."""
    import uvicorn

    from ..models.resolve import resolve_model
    from .app import create_app

    resolve_model(config.engine.model)  # a mistyped --model fails now, not after binding
    # The engine thread's Python between torch ops holds the GIL for up to the switch interval
    # (5 ms by default) while the event loop waits to send a finished token: every chunk paid
    # that wait. 0.5 ms hands the GIL over sooner, at a small cost in switching.
    sys.setswitchinterval(0.0005)
    sock = bind(config.host, config.port)
    config = replace(config, port=sock.getsockname()[1])  # --port 0: the one the OS chose
    state = ServerState(config)
    server: _Server | None = None

    def failed(state: ServerState) -> None:
        server.should_exit = True  # the load failed: stop serving, report it below

    cutoff = Cutoff()
    app = create_app(state, on_ready=on_ready, on_failure=failed, cutoff=cutoff)
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,  # AccessLog writes one shorter line
            # uvicorn's own cancellation at its timeout is only the backstop: Cutoff ends the
            # requests left at `shutdown_grace`, and they get this margin to write their ending.
            timeout_graceful_shutdown=config.shutdown_grace + _CUT_MARGIN,
            timeout_keep_alive=5,
            lifespan="on",
            http=h11_protocol(config.header_timeout),
            ws="none",
            loop="asyncio",
        ),
        config.shutdown_grace,
        cutoff,
    )
    on_listening(state)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if state.status == state.FAILED:
        raise LlmtoolError(f"cannot serve {config.engine.model}: {state.error}")


_CUT_MARGIN = 5.0  # seconds: cut requests end at once; this only bounds a stuck one


class _Server:
    """uvicorn.Server whose signal handlers stop it gracefully and return, instead of
    re-raising the signal afterwards (which would end the process with 143, not 0), and
    which cuts the requests still running when the grace period ends."""

    def __new__(cls, config, grace: float, cutoff: Cutoff):
        import uvicorn

        class Server(uvicorn.Server):
            _loop: asyncio.AbstractEventLoop | None = None
            _cut_early = False

            async def shutdown(self, sockets=None) -> None:
                self._loop = asyncio.get_running_loop()
                timer = self._loop.call_later(grace, self._cut, "the grace period is over")
                try:
                    await super().shutdown(sockets)
                finally:
                    timer.cancel()

            def _cut(self, why: str) -> None:
                count = cutoff.cut()
                if count:
                    log.warning("%s: cutting %d in-flight request(s)", why, count)

            @contextlib.contextmanager
            def capture_signals(self):
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {
                    sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
                }
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame) -> None:
                name = signal.Signals(sig).name
                if self.should_exit and self._loop is not None and not self._cut_early:
                    log.warning("%s again: cutting in-flight requests now", name)
                    self._cut_early = True
                    self._loop.call_soon_threadsafe(self._cut, f"{name} again")
                elif self.should_exit:
                    log.warning("%s again: exiting without waiting", name)
                    self.force_exit = True
                else:
                    log.info("%s: no new connections; in-flight requests get up to %g s", name, grace)
                    self.should_exit = True

        return Server(config)
