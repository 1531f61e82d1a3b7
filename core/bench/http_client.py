"""OpenAIClient: the streaming HTTP client of `llmtool bench`, for any OpenAI-compatible server
(llmtool serve, vLLM, llama.cpp's llama-server, TGI's OpenAI route).

Its own HTTP/1.1 on asyncio streams, not httpx. Measured on the 2-core dev VM: httpx 0.28
spent ~0.9 ms of CPU per request (0.65 ms before the first byte left) and ~140 us per
streamed chunk, all of it inside TTFT and ITL (+1.9 ms on TTFT at concurrency 1); its pool
(httpcore 1.0.9) rescans every connection, polling idle sockets, whenever a request starts
or ends: ~5 ms per request at 100 connections (encode/httpcore#1035), which made TTFT at
concurrency 100 off by seconds. This client: ~0.15 ms per request, ~45 us per chunk (both
with the wake-up), standard library only (httpx is not a runtime dependency of llmtool).
Connections are kept alive, at most `max_connections` (the run's concurrency) of them, so
no handshake is timed. Not supported: proxies, redirects, HTTP/2.

Each request streams (SSE) and is timed on time.perf_counter relative to the run's t0, one
stamp per HTTP chunk as it is read. Parsing is minimal (one json.loads per event, a few
dict lookups). Not here: arrival schedules (load.py), metric math (metrics.py).
"""

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import LlmtoolError, UsageError
from .http_connection import ConnectFailed, ConnectionPool, read_all
from .records import RequestRecord

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
NO_OUTPUT = "no_output"  # the stream ended normally without any text (metrics.py's kind, too)
_DONE = b"[DONE]"
_PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class ClientConfig:
    base_url: str  # http(s)://host:port[/prefix], with or without a trailing /v1
    endpoint: str = "completions"  # "completions" (prompt text) or "chat" (prompt -> one user message)
    model: str | None = None  # None: the server's first model, as probe() finds it
    api_key: str | None = None  # sent as `Authorization: Bearer KEY`
    timeout: float = 600.0  # seconds for a whole request, send to [DONE]
    max_connections: int | None = 1  # the run's concurrency; None: unbounded (open loop, no cap)
    ignore_eos: bool = False  # vLLM / llama.cpp / llmtool extension: always generate max_tokens
    temperature: float = 0.0
    logprobs: bool = False  # ask for logprobs: exact token counts of multi-token chunks, some server cost

    def __post_init__(self):
        if self.endpoint not in ENDPOINTS:
            raise UsageError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {self.endpoint!r}")
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UsageError(f"the server URL must look like http://host:port, not {self.base_url!r}")
        if self.timeout <= 0:
            raise UsageError(f"timeout must be > 0 seconds, not {self.timeout}")
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"max_connections must be >= 1, not {self.max_connections}")

    @property
    def root(self) -> str:
        """The base URL without a trailing slash or /v1 (the endpoint paths carry /v1)."""
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url


@dataclass(frozen=True)
class ServerInfo:
    model: str  # the model name requests will carry
    served: tuple[str, ...]  # every id GET /v1/models listed (a --model not among them may be an alias)


class OpenAIClient:
    """`async with OpenAIClient(config) as client: await client.probe(); await client.send(...)`."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.model = config.model
        self.is_chat = config.endpoint == "chat"
        url = urlsplit(config.root)
        self.pool = ConnectionPool(url.scheme, url.hostname, url.port, config.max_connections)
        host = url.netloc.rsplit("@", 1)[-1]
        common = f"Host: {host}\r\nUser-Agent: llmtool-bench\r\n"
        if config.api_key:
            common += f"Authorization: Bearer {config.api_key}\r\n"
        # Request heads are built once; a request is head + its length + body.
        path = url.path + ENDPOINTS[config.endpoint]
        self.post_head = (
            f"POST {path} HTTP/1.1\r\n{common}Accept: text/event-stream\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.models_request = (
            f"GET {url.path}/v1/models HTTP/1.1\r\n{common}Accept: application/json\r\n\r\n".encode()
        )

    async def __aenter__(self) -> "OpenAIClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.pool.close()

    async def probe(self) -> ServerInfo:
        """GET /v1/models: proves the server answers and the key is right, and picks the model
        when none was given. Raises LlmtoolError with one actionable line otherwise."""
        root, limit = self.config.root, min(self.config.timeout, _PROBE_TIMEOUT)
        url = f"{root}/v1/models"
        try:
            async with asyncio.timeout(limit):
                async with self.pool.request(self.models_request) as (conn, status, headers):
                    raw = await read_all(conn.body(headers))
        except TimeoutError:
            raise LlmtoolError(f"{url} did not answer within {limit:g} s.") from None
        except ConnectFailed as e:
            raise LlmtoolError(f"Cannot reach {root} ({e}); is the server running?") from None
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as e:
            raise LlmtoolError(f"GET {url} failed: {first_line(e)}") from None
        if status in (401, 403):
            why = "rejected the API key" if self.config.api_key else "requires an API key"
            raise LlmtoolError(f"{root} {why} (HTTP {status}: {error_message(raw)}); check --api-key.")
        if status != 200:
            raise LlmtoolError(f"GET {url} answered HTTP {status}: {error_message(raw)}")
        try:
            served = tuple(str(m["id"]) for m in json.loads(raw)["data"])
        except (ValueError, KeyError, TypeError):
            raise LlmtoolError(f"GET {url} did not return an OpenAI model list.") from None
        model = self.config.model or (served[0] if served else None)
        if model is None:
            raise LlmtoolError(f"{root} lists no models; name one with --model.")
        self.model = model
        return ServerInfo(model, served)

    def body(self, prompt: str, output_len: int) -> dict:
        cfg = self.config
        body: dict = {"model": self.model} if self.model else {}
        if self.is_chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body |= {"max_tokens": output_len, "temperature": cfg.temperature, "stream": True}
        body["stream_options"] = {"include_usage": True}
        if cfg.ignore_eos:
            body["ignore_eos"] = True
        if cfg.logprobs:
            # Completions' logprobs is a top-k count (1: llama.cpp returns nothing for 0); chat's a flag.
            body["logprobs"] = True if self.is_chat else 1
        return body

    async def send(
        self,
        index: int,
        prompt: str,
        output_len: int,
        scheduled: float,
        t0: float,
        prompt_len: int | None = None,
    ) -> RequestRecord:
        """Send one request now and stream it to the end. Never raises for a failed request: the
        record's error says what kind of failure it was (cancellation still propagates)."""
        record = RequestRecord(index, scheduled, prompt_len=prompt_len)
        stream = _Stream(self.is_chat)
        payload = json.dumps(self.body(prompt, output_len)).encode()
        data = b"%s%d\r\n\r\n%s" % (self.post_head, len(payload), payload)
        try:
            async with asyncio.timeout(self.config.timeout):
                record.sent = time.perf_counter() - t0
                async with self.pool.request(data) as (conn, status, headers):
                    if status != 200:
                        record.error = f"http_{status}"
                        record.error_detail = error_message(await read_all(conn.body(headers)))
                        return record
                    await stream.read(conn.body(headers), t0, record)
        except TimeoutError:  # before OSError: TimeoutError is one
            record.error = "timeout"
            record.error_detail = f"no complete response within {self.config.timeout:g} s"
        except ConnectFailed as e:
            record.error, record.error_detail = "connect", first_line(e)
        except (OSError, EOFError) as e:  # reset, closed mid-response (IncompleteReadError is an EOFError)
            record.error, record.error_detail = "disconnect", first_line(e)
        except (ValueError, asyncio.LimitOverrunError) as e:  # not HTTP, not SSE, not JSON; a huge line
            record.error, record.error_detail = "invalid", first_line(e)
        finally:
            stream.fill(record)
        return record


class _Stream:
    """One response's parse state; `fill` turns it into the record's counts at the end."""

    def __init__(self, is_chat: bool):
        self.is_chat = is_chat
        self.text_lens: list[int] = []  # characters in each text-carrying chunk
        self.texts: list[str] = []  # joined once at the end, for the client-tokenizer cross-check
        self.logprob_counts: list[int] = []  # tokens in its logprobs (0: none given)
        self.usage: dict | None = None
        self.done = False  # data: [DONE] seen
        self.num_events = 0
        self.stream_error: str | None = None

    async def read(self, body, t0: float, record: RequestRecord) -> None:
        times = record.chunk_times
        buf = b""
        async for data in body:
            now = time.perf_counter() - t0
            if self.done or self.stream_error:
                continue  # drain to the end, so the connection can serve the next request
            buf += data
            if b"\n" not in data:
                continue  # buf held no newline before this read: still no complete line
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    self.event(line[5:].strip(), now, times)
                    if self.done or self.stream_error:
                        break

    def event(self, payload: bytes, now: float, times: list[float]) -> None:
        if payload == _DONE:
            self.done = True
            return
        self.num_events += 1
        try:
            msg = json.loads(payload)
            if "error" in msg:  # a server that fails mid-stream sends OpenAI's error body as an event
                err = msg["error"]
                self.stream_error = str(err.get("message", err) if isinstance(err, dict) else err)
                return
            choices = msg.get("choices")
            if choices:
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content") if self.is_chat else choice.get("text")
                if text:
                    times.append(now)
                    self.text_lens.append(len(text))
                    self.texts.append(text)
                    lp = choice.get("logprobs")
                    self.logprob_counts.append(
                        len(lp.get("content" if self.is_chat else "tokens") or ()) if lp else 0
                    )
            usage = msg.get("usage")
            if usage:
                self.usage = usage
        except (ValueError, AttributeError, TypeError, KeyError, IndexError):
            raise ValueError(f"not an OpenAI stream chunk: {payload[:120]!r}") from None

    def fill(self, record: RequestRecord) -> None:
        times = record.chunk_times
        if times:
            record.first_token, record.end = times[0], times[-1]
        record.output_text_len = sum(self.text_lens)
        record.output_text = "".join(self.texts)
        if self.usage:
            record.prompt_tokens = _int_or_none(self.usage.get("prompt_tokens"))
            record.output_tokens = _int_or_none(self.usage.get("completion_tokens"))
        record.chunk_tokens = chunk_token_counts(self.text_lens, self.logprob_counts, record.output_tokens)
        if record.error is not None:
            return
        if self.stream_error is not None:
            record.error, record.error_detail = "stream_error", first_line(self.stream_error)
        elif not self.done:
            record.error = "disconnect" if self.num_events else "invalid"
            record.error_detail = "the stream ended without data: [DONE]"
        elif not times:
            record.error, record.error_detail = NO_OUTPUT, "the stream carried no text"


def chunk_token_counts(text_lens: list[int], logprob_counts: list[int], num_tokens: int | None) -> list[int]:
    """Tokens carried by each text chunk. One each when the server's token count equals the
    number of chunks (the common case) or is unknown; else each chunk's logprobs when every
    chunk has them (exact); else an ESTIMATE: the server's count split in proportion to the
    chunks' text lengths, integers >= 1 summing to it (exact when tokens are equally long)."""
    n = len(text_lens)
    if num_tokens is None or num_tokens == n or n == 0:
        return [1] * n
    if all(logprob_counts):
        return list(logprob_counts)
    if num_tokens < n:  # fewer tokens than chunks (a token split across chunks): cannot be >= 1 each
        return [1] * n
    return split_proportional(num_tokens, text_lens)


def split_proportional(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder apportionment of `total` by `weights`, every share >= 1 (total >= len)."""
    scale = total / sum(weights)
    quotas = [w * scale for w in weights]
    shares = [max(1, int(q)) for q in quotas]
    diff = total - sum(shares)
    # Give to the largest remainders first; take back (after a >= 1 bump) from the smallest.
    order = sorted(range(len(shares)), key=lambda j: quotas[j] - shares[j], reverse=diff > 0)
    while diff:
        for j in order:
            if diff > 0:
                shares[j] += 1
                diff -= 1
            elif shares[j] > 1:
                shares[j] -= 1
                diff += 1
            if not diff:
                break
    return shares


def error_message(raw: bytes) -> str:
    """The message of an OpenAI error body ({"error": {"message"}}), of vLLM's older
    {"message"} or FastAPI's {"detail"}; else the body's first line."""
    try:
        body = json.loads(raw)
        err = body.get("error", body)
        msg = err.get("message") or err.get("detail") if isinstance(err, dict) else err
        if msg:
            return first_line(msg)
    except (ValueError, AttributeError):
        pass
    return first_line(raw.decode("utf-8", "replace")) if raw.strip() else "(empty body)"


def first_line(what: object, limit: int = 300) -> str:
    text = str(what).strip() or type(what).__name__
    return text.splitlines()[0][:limit]


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) else None


# ---- HTTP/1.1 over asyncio streams: just what a streaming benchmark client needs ----------------
