"""Malformed and hostile requests to the real server process, over raw sockets: each gets a 4xx
with OpenAI's error body, the server keeps serving, and other requests are not held up.

Each test is a defect once seen here: JSON nested 10,000 deep (RecursionError, 500), a
5,000-digit integer (ValueError, 500), lone surrogates (500, or a 200 for `stop`), a 20 MB
prompt tokenized in full before the length check (39 s, and a concurrent request waited
35 s), bodies shorter than their Content-Length held for minutes, slow headers (slowloris),
and streams cut at the end of --shutdown-grace without a terminal event.
"""

import json
import signal
import threading
import time

import pytest

from tests.machine import slowdown
from tests.raw_http import (
    Reader,
    assert_openai_error,
    connect,
    post_bytes,
    read_response,
    request_bytes,
    send,
)
from tests.server_process import ServerProcess

from .conftest import _save_tiny

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

HEADER_TIMEOUT = 2.0  # seconds, for the server under test (the defaults are 10 and 30)
BODY_TIMEOUT = 2.0
MAX_MODEL_LEN = 1024
NAME = "tiny"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's vocabulary, tokenizer and chat template."""
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    path = tmp_path_factory.mktemp("tiny-hardening")
    _save_tiny(path, "llama", vocab_size=49152, max_position_embeddings=4096, eos_token_id=2)
    load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]), fast=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_dir):
    args = ["--model", str(tiny_dir), "--served-model-name", NAME, "--dtype", "fp32"]
    args += ["--max-model-len", str(MAX_MODEL_LEN)]
    args += ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)]
    proc = ServerProcess(*args).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.output()
    log = proc.output()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


@pytest.fixture(scope="module")
def slow():
    return slowdown()


def completion(prompt="Hello", max_tokens=4, **extra) -> dict:
    return {"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def chat(content="Hello", max_tokens=4, **extra) -> dict:
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }


def assert_alive(server) -> float:
    """A normal request still succeeds; returns its latency in seconds."""
    start = time.perf_counter()
    r = send(server.port, post_bytes("/v1/completions", completion()))
    assert r.status == 200, r.body[:300]
    assert r.json()["choices"][0]["text"] is not None
    return time.perf_counter() - start


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_json_is_400(server, depth):
    deep = _nested(depth)
    bodies = {
        "body": deep,
        "prompt": b'{"model": "tiny", "prompt": ' + deep + b"}",
        "messages": b'{"model": "tiny", "messages": ' + deep + b"}",
        "content": b'{"model": "tiny", "messages": [{"role": "user", "content": ' + deep + b"}]}",
        "tools": b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": ' + deep + b"}",
    }
    for where, body in bodies.items():
        endpoint = "/v1/completions" if where in ("body", "prompt") else "/v1/chat/completions"
        error = assert_openai_error(send(server.port, post_bytes(endpoint, body)), 400, "invalid_json")
        assert "nest" in error["message"], (where, error)
    # Just over the depth limit (64) and inside what Python's own recursion limit allows: the
    # body parses, and is refused before pydantic, repr or the chat template recurse into it.
    for depth in (65, 900):
        body = b'{"model": "tiny", "response_format": ' + _nested(depth) + b"}"
        error = assert_openai_error(send(server.port, post_bytes("/v1/chat/completions", body)), 400)
        assert "nest" in error["message"]
    assert_alive(server)


def test_huge_numbers_are_400(server):
    digits = b"9" * 5000
    for field in (b"max_tokens", b"n", b"seed", b"top_k", b"logprobs", b"min_tokens"):
        body = b'{"model": "tiny", "prompt": "x", "' + field + b'": ' + digits + b"}"
        error = assert_openai_error(send(server.port, post_bytes("/v1/completions", body)), 400)
        assert "5000 digits" in error["message"]
    # Integers within Python's limit but far out of range, and floats that overflow to inf.
    for field, value in [("max_tokens", b"9" * 4000), ("n", b"-" + b"9" * 4000), ("temperature", b"1e99999")]:
        body = b'{"model": "tiny", "prompt": "x", "' + field.encode() + b'": ' + value + b"}"
        error = assert_openai_error(send(server.port, post_bytes("/v1/completions", body)), 400)
        assert error["param"] in (field, None), error
    assert_alive(server)


@pytest.mark.parametrize(
    "endpoint, body, param",
    [
        ("/v1/completions", b'{"prompt": "ab\\ud800cd", "max_tokens": 2}', "prompt"),
        ("/v1/completions", b'{"prompt": ["ok", "\\udfff"], "max_tokens": 2}', "prompt[1]"),
        ("/v1/completions", b'{"prompt": "x", "model": "\\ud800"}', "model"),
        ("/v1/completions", b'{"prompt": "x", "stop": "\\udc00", "max_tokens": 2}', "stop"),
        ("/v1/completions", b'{"prompt": "x", "stop": ["a", "\\ud834"], "max_tokens": 2}', "stop[1]"),
        ("/v1/completions", b'{"prompt": "x", "user": "\\ud800", "max_tokens": 2}', "user"),
        ("/v1/completions", b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}', "prompt"),  # raw bytes
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udbff"}]}]}',
            "messages[0].content[0].text",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x", "name": "\\ud800"}]}',
            "messages[0].name",
        ),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(server, endpoint, body, param):
    error = assert_openai_error(send(server.port, post_bytes(endpoint, body)), 400, "invalid_value")
    assert error["param"] == param, error
    assert "surrogate" in error["message"]


def test_surrogate_pairs_are_fine_and_unknown_models_with_odd_names_are_404(server):
    # A pair (what json.dumps writes for an emoji) is one character, not a lone surrogate.
    r = send(server.port, post_bytes("/v1/completions", b'{"prompt": "hi \\ud83d\\ude00", "max_tokens": 2}'))
    assert r.status == 200, r.body
    r = send(server.port, post_bytes("/v1/completions", {"prompt": "x", "model": "caf\u00e9 \U0001f600"}))
    assert_openai_error(r, 404, "model_not_found")
    assert_alive(server)


def test_a_body_over_the_limit_is_413_before_it_is_read(server, slow):
    # Content-Length alone decides: the 20 MB never need to be sent (default limit 16 MiB).
    head = request_bytes("POST", "/v1/completions", b"", content_length=False, close=False)
    head = head[:-2] + b"Content-Length: 20000000\r\n\r\n"
    start = time.perf_counter()
    with connect(server.port) as sock:
        sock.sendall(head + b'{"prompt": "')
        r = read_response(sock, check_closed=True)
    assert time.perf_counter() - start < 2 * slow
    error = assert_openai_error(r, 413, "request_too_large")
    assert "16,777,216" in error["message"]
    assert r.closed
    assert_alive(server)


def test_a_chunked_body_over_the_limit_is_413(server):
    payload = b'{"prompt": "' + b"a" * (17 * 2**20) + b'"}'
    head = request_bytes("POST", "/v1/completions", b"", content_length=False, close=False)
    head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    with connect(server.port, timeout=30) as sock:

        def push():
            try:
                sock.sendall(head)
                for i in range(0, len(payload), 2**20):
                    part = payload[i : i + 2**20]
                    sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed: expected

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        r = read_response(sock)
        pusher.join(10)
    assert_openai_error(r, 413, "request_too_large")
    assert_alive(server)


def test_a_long_prompt_is_refused_untokenized_and_others_keep_flowing(server, slow):
    """10 MB of text (under the body limit) cannot fit a 1024-token context: refused by its
    length alone, in about the time the body takes to parse, while a small request beside it
    is answered as fast as ever."""
    big = post_bytes("/v1/completions", completion(prompt="hello world " * 900_000))
    baseline = min(assert_alive(server) for _ in range(3))
    result = {}

    def run_big():
        start = time.perf_counter()
        result["big"] = send(server.port, big, timeout=60)
        result["big_s"] = time.perf_counter() - start

    thread = threading.Thread(target=run_big)
    thread.start()
    time.sleep(0.05)
    small_s = max(assert_alive(server) for _ in range(3))
    thread.join(60)
    error = assert_openai_error(result["big"], 400, "context_length_exceeded")
    assert error["param"] == "prompt"
    assert result["big_s"] < 5 * slow, result["big_s"]  # was 39 s: tokenized in full first
    assert small_s < baseline + 1.0 * slow, (small_s, baseline)
    # The same through chat, whose text is the rendered template.
    r = send(
        server.port, post_bytes("/v1/chat/completions", chat(content="hello world " * 900_000)), timeout=60
    )
    assert assert_openai_error(r, 400, "context_length_exceeded")["param"] == "messages"


def test_the_character_bound_never_refuses_a_prompt_that_fits(tiny_dir):
    """No token of the tokenizer covers more characters than the longest vocabulary entry,
    so tokens >= characters / longest for any text, the bound check_prompt_chars relies on."""
    import random

    from llmtool.core.models.tokenizer import load_tokenizer_dir
    from llmtool.core.server.prompt_limit import check_prompt_chars, longest_token_chars

    tokenizer = load_tokenizer_dir(tiny_dir)
    longest = longest_token_chars(tokenizer)
    vocab = sorted(tokenizer.get_vocab(), key=len, reverse=True)
    rng = random.Random(0)
    alphabet = "abc xyz\n\t   0123.,!é€😀中文\u0301"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(200)]
    texts += [" " * 5000, "=" * 5000, "".join(vocab[:200]), tokenizer.decode(list(range(1000)))]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(text) <= longest * max(len(ids), 1), (len(text), len(ids), longest)
        check_prompt_chars(tokenizer, text, longest * (len(ids) + 1), "prompt")  # fits: no raise


def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes(server, slow):
    body = json.dumps(completion()).encode()
    head = request_bytes("POST", "/v1/completions", b"", content_length=False, close=False)
    head = head[:-2] + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
    start = time.perf_counter()
    with connect(server.port, timeout=30) as sock:
        sock.sendall(head + body)
        r = read_response(sock, check_closed=True)
    took = time.perf_counter() - start
    assert_openai_error(r, 408, "request_timeout")
    assert r.closed
    assert BODY_TIMEOUT - 0.1 < took < BODY_TIMEOUT + 3 * slow, took
    assert_alive(server)


def test_a_chunked_body_that_ends_early_gets_408(server, slow):
    body = json.dumps(completion()).encode()
    head = request_bytes("POST", "/v1/completions", b"", content_length=False, close=False)
    head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    with connect(server.port, timeout=30) as sock:
        sock.sendall(head + b"%x\r\n" % len(body) + body + b"\r\n")  # no last chunk
        r = read_response(sock, check_closed=True)
    assert_openai_error(r, 408, "request_timeout")
    assert r.closed
    assert_alive(server)


def test_slow_headers_do_not_starve_others_and_time_out_with_408(server, slow):
    baseline = sorted(assert_alive(server) for _ in range(5))[2]
    idle = connect(server.port, timeout=30)  # sends nothing at all
    slowloris = []
    for _ in range(200):
        sock = connect(server.port, timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        slowloris.append(sock)
    start = time.perf_counter()
    for sock in slowloris:  # one more header line each, as slowloris does to stay alive
        sock.sendall(b"X-Pad: 1\r\n")
    loaded = sorted(assert_alive(server) for _ in range(5))[2]
    assert loaded < baseline + 0.5 * slow, (loaded, baseline)
    try:
        statuses = []
        for sock in slowloris:
            reader = Reader(sock)
            statuses.append(reader.head()[0])
            assert reader.rest().endswith(b"}")  # the error body, then the close
        took = time.perf_counter() - start
        assert set(statuses) == {408}
        assert took < HEADER_TIMEOUT + 3 * slow, took
        assert idle.recv(100) == b""  # closed quietly: it never sent a byte
    finally:
        for sock in [idle, *slowloris]:
            sock.close()
    r = send(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX: 1\r\n\r\n", check_closed=True)
    assert r.status != 408  # a complete head in time is not a header timeout (no body: 400)
    assert_alive(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    ],
    ids=["bad-length", "two-lengths", "bad-chunk", "garbage", "huge-header"],
)
def test_malformed_http_gets_openai_400(server, raw):
    assert_openai_error(send(server.port, raw), 400, "invalid_http_request")
    assert_alive(server)


def test_shutdown_grace_expiry_ends_streams_with_an_error_event(tiny_dir, slow):
    """Two streams and a non-streaming request outlive --shutdown-grace 1: each stream ends
    with OpenAI's error event and [DONE], the other request gets a 503, the log one line each."""
    proc = ServerProcess("--model", str(tiny_dir), "--dtype", "fp32", "--shutdown-grace", "1").wait_ready()
    body = {"prompt": "count", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    socks, readers = [], []
    try:
        plain = connect(proc.port, timeout=30)
        socks.append(plain)
        plain.sendall(post_bytes("/v1/completions", {**body, "stream": False}))
        for _ in range(2):
            sock = connect(proc.port, timeout=30)
            sock.sendall(post_bytes("/v1/completions", body))
            reader = Reader(sock)
            assert reader.head()[0] == 200
            socks.append(sock)
            readers.append(reader)
        chunks = [[next(r.chunks())] for r in readers]  # both streams are producing
        started = time.perf_counter()
        proc.proc.send_signal(signal.SIGTERM)
        for reader, got in zip(readers, chunks, strict=True):
            got += list(reader.chunks())
        took = time.perf_counter() - started
        cut = read_response(plain)
        assert proc.proc.wait(30) == 0
    finally:
        for sock in socks:
            sock.close()
        proc.stop()
    for got in chunks:
        events = [e for e in b"".join(got).decode().split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][6:])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
        assert set(error) == {"message", "type", "param", "code"}
        assert all("error" not in json.loads(e[6:]) for e in events[1:-2])  # tokens until the cut
    assert 0.9 < took < 1 + 3 * slow, took
    error = cut.json()["error"]
    assert cut.status == 503 and error["code"] == "server_shutting_down", cut.body
    log = proc.output()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert log.count("shutdown grace period over") == 3, log[-3000:]
