"""A deterministic OpenAI-style streaming server for the bench client's tests: real HTTP on
127.0.0.1 (uvicorn, h11) in a subprocess, no model. It is not a mock of any one server's
quirks; it is a clock: every chunk leaves at a time fixed in advance, so the tests know the
true TTFT, TPOT and ITL of every request exactly.

Timing (per request, on the server's perf_counter, from the moment its body was read): the
first chunk leaves at ttft and each later chunk carrying j tokens follows its predecessor by
j * itl, as a speculative decoder's accepted tokens arrive together. With k tokens per chunk
REFERENCE.md's k gaps of gap/k are then exactly itl each, TTFT is ttft, and E2E is
ttft + (n - k) * itl for n tokens.

A stall (POST /stall, StreamServer.stall) is a window in which nothing leaves: a chunk due in
it leaves at its end and the rest of its stream shifts by as much, as if the engine had
paused. Requests still arrive and are timed from their arrival.

A subprocess, not a thread, so the client under test and the server do not share a GIL; the
event loop is a select() one because epoll rounds every timer up to the next millisecond,
which would make the server itself late by up to 1 ms. Each chunk's JSON is built before its
deadline, so only the write is left at the deadline. The server measures how late each chunk
actually left (GET /stats, DELETE resets), so a test can prove its own error is negligible.

Per-request behaviour comes from `key=value` words in the prompt (the chat endpoint reads
the last message), so one server covers every case:
  ttft_ms, itl_ms, k (tokens per chunk), tokens (instead of max_tokens; 0: no text at all),
  text=varied (token texts of unequal length),
  usage=none (never report usage), status=500 (answer that HTTP error), disconnect_after=N
  (drop the connection after N text chunks), truncate_after=N (end the body cleanly after N
  text chunks, without [DONE]), invalid=1 (a chunk that is not JSON), stream_error=1 (an
  error event mid-stream, as our server sends when generation fails).
"""

import asyncio
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

MODEL = "stream-test"
# An idle VM wakes from a timer up to ~1 ms late; a loop with streams to serve wakes on time.
# So with few streams in flight the last SPIN seconds before a deadline are spun, not slept.
SPIN, SPIN_MAX_STREAMS = 0.0005, 8


@dataclass(frozen=True)
class StreamServerConfig:
    ttft_ms: float = 50.0  # defaults; a prompt's key=value words override them per request
    itl_ms: float = 10.0
    tokens_per_chunk: int = 1
    output_tokens: int = 16  # when the request gives no max_tokens
    api_key: str | None = None  # required as `Authorization: Bearer KEY` on /v1/* when set
    keep_alive_s: float = 5.0  # an idle connection is closed after this long (uvicorn's default)


def prompt_options(prompt: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in prompt.split() if "=" in word)


def token_text(t: int, varied: bool) -> str:
    # Equal lengths make the client's length-proportional token estimate exact; varied
    # lengths make it wrong, so only per-chunk logprobs can count the tokens right.
    return "abcd"[: 1 + t % 4] if varied else " tok"


class App:
    """The raw ASGI app (no framework: per-chunk overhead must stay in microseconds)."""

    def __init__(self, config: StreamServerConfig):
        self.config = config
        self.lateness: list[float] = []  # seconds each chunk left after its deadline
        self.stall: tuple[float, float] | None = None  # (start, end) on perf_counter
        self.num_streams = 0  # completions in flight

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrival = time.perf_counter()
        if path == "/stats":
            return await self.stats(send, method)
        if path == "/stall":  # {"after_s": A, "seconds": S}: nothing leaves during [now+A, now+A+S)
            req = json.loads(body)
            start = arrival + req["after_s"]
            self.stall = (start, start + req["seconds"])
            return await json_response(send, 200, {"start": start, "end": start + req["seconds"]})
        key = self.config.api_key
        if key and dict(scope["headers"]).get(b"authorization") != f"Bearer {key}".encode():
            return await json_response(
                send, 401, error_body("Incorrect API key provided.", "invalid_api_key")
            )
        if path == "/v1/models":
            return await json_response(
                send, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            )
        if path not in ("/v1/completions", "/v1/chat/completions") or method != "POST":
            return await json_response(send, 404, error_body(f"no route {method} {path}", "not_found"))
        self.num_streams += 1
        try:
            await self.stream(send, json.loads(body), path.endswith("chat/completions"), arrival)
        finally:
            self.num_streams -= 1

    async def stats(self, send, method: str) -> None:
        if method == "DELETE":
            self.lateness = []
        late = sorted(self.lateness)
        out = {"count": len(late)}
        for q in (50, 90, 99, 100):  # nearest-rank percentiles, in ms
            out[f"p{q}_ms"] = 1e3 * late[min(len(late) - 1, len(late) * q // 100)] if late else 0.0
        await json_response(send, 200, out)

    async def stream(self, send, req: dict, chat: bool, arrival: float) -> None:
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        opt = prompt_options(prompt)
        if "status" in opt:
            status = int(opt["status"])
            return await json_response(send, status, error_body(f"injected HTTP {status}", "server_error"))
        cfg = self.config
        n = int(opt.get("tokens", req.get("max_tokens") or cfg.output_tokens))
        k = int(opt.get("k", cfg.tokens_per_chunk))
        ttft, itl = float(opt.get("ttft_ms", cfg.ttft_ms)) / 1e3, float(opt.get("itl_ms", cfg.itl_ms)) / 1e3
        varied = opt.get("text") == "varied"
        want_usage = (
            bool((req.get("stream_options") or {}).get("include_usage")) and opt.get("usage") != "none"
        )
        want_logprobs = req.get("logprobs") is not None and req.get("logprobs") is not False
        cut = int(opt.get("disconnect_after", opt.get("truncate_after", -1)))
        head = {"id": "cmpl-test", "object": "chat.completion.chunk" if chat else "text_completion"}
        head |= {"created": 0, "model": MODEL}

        async def emit(payload: dict | bytes, deadline: float | None = None) -> None:
            # Serialized before the wait: at the deadline only the write is left to do.
            data = payload if isinstance(payload, bytes) else b"data: %s\n\n" % json.dumps(payload).encode()
            if deadline is not None:
                spin = SPIN if self.num_streams <= SPIN_MAX_STREAMS else 0.0
                if deadline - time.perf_counter() > spin:
                    await asyncio.sleep(deadline - time.perf_counter() - spin)
                while time.perf_counter() < deadline:
                    await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if deadline is not None:
                self.lateness.append(time.perf_counter() - deadline)

        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if chat:  # role-only opening chunk, sent at once: a client must not take it for the first token
            await emit({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        shift = 0.0  # how far a stall has pushed this stream back
        for num_chunks, first in enumerate(range(0, n, k)):
            if num_chunks == cut:
                if "disconnect_after" in opt:
                    raise ConnectionAbortedError("injected disconnect")  # uvicorn drops the connection
                return await send({"type": "http.response.body", "body": b"", "more_body": False})
            tokens = [token_text(t, varied) for t in range(first, min(first + k, n))]
            deadline = arrival + ttft + (first + len(tokens) - min(k, n)) * itl
            if self.stall and self.stall[0] <= deadline + shift < self.stall[1]:
                shift = self.stall[1] - deadline
            if opt.get("invalid") and num_chunks == 1:
                await emit(b"data: {not json\n\n", deadline + shift)
                continue
            if opt.get("stream_error") and num_chunks == 1:
                await emit({"error": {"message": "injected generation failure", "type": "server_error"}})
                break
            text = "".join(tokens)
            lp = None
            if want_logprobs:
                entries = [{"token": t, "logprob": -0.5, "top_logprobs": []} for t in tokens]
                lp = (
                    {"content": entries}
                    if chat
                    else {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens)}
                )
            choice = {"index": 0, "logprobs": lp, "finish_reason": None}
            choice |= {"delta": {"content": text}} if chat else {"text": text}
            await emit({**head, "choices": [choice]}, deadline + shift)
        # The closing chunk, usage and [DONE] leave together, in the write that ends the body.
        last = {"index": 0, "finish_reason": "length"} | ({"delta": {}} if chat else {"text": ""})
        tail = [{**head, "choices": [last]}]
        if want_usage:
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n}
            tail.append(
                {**head, "choices": [], "usage": usage | {"total_tokens": usage["prompt_tokens"] + n}}
            )
        data = b"".join(b"data: %s\n\n" % json.dumps(t).encode() for t in tail) + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": False})


def error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


async def json_response(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class StreamServer:
    """The server in a subprocess: `with StreamServer(config) as server: ... server.url`."""

    def __init__(self, config: StreamServerConfig = StreamServerConfig()):
        from tests.server_process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not `-m tests.stream_server`: nothing we start puts the repo root first on sys.path.
        args = [sys.executable, "-P", os.path.abspath(__file__), str(self.port), json.dumps(asdict(config))]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it while tests run
        self.proc = subprocess.Popen(args, cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"stream server exited: {self.log.read().decode()}")
            try:
                httpx.get(f"{self.url}/stats", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("stream server did not start")

    def stats(self, reset: bool = False) -> dict:
        import httpx

        return httpx.request("DELETE" if reset else "GET", f"{self.url}/stats").json()

    def stall(self, after_s: float, seconds: float) -> tuple[float, float]:
        """Stall from `after_s` seconds from now for `seconds`; returns the window on
        time.perf_counter (CLOCK_MONOTONIC, the same clock in every process here)."""
        import httpx

        window = httpx.post(f"{self.url}/stall", json={"after_s": after_s, "seconds": seconds}).json()
        return window["start"], window["end"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "StreamServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(port: int, config: StreamServerConfig) -> None:
    import uvicorn

    # log_level critical: the injected disconnects would otherwise print tracebacks.
    server = uvicorn.Server(
        uvicorn.Config(
            App(config),
            port=port,
            http="h11",
            lifespan="off",
            log_level="critical",
            access_log=False,
            timeout_keep_alive=config.keep_alive_s,
        )
    )
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())) as runner:
        runner.run(server.serve())


if __name__ == "__main__":
    main(int(sys.argv[1]), StreamServerConfig(**json.loads(sys.argv[2])))
