"""Seeded fuzzing of /v1/completions and /v1/chat/completions over raw sockets: several hundred
malformed requests, each made invalid on purpose (a wrong type, a number out of range or too
long, deep nesting, a lone surrogate, truncated JSON, invalid UTF-8, a bad Content-Length,
random bytes, bad messages / tools / stop / logprobs), must each get a 4xx with OpenAI's
error body within a few seconds (never a 5xx, never a hang), and the server must serve a
normal request at the end with nothing unexpected in its log.

Deterministic: one random.Random seed; a failure names the case, which replays alone.
"""

import json
import random
import time

import pytest

from tests.raw_http import assert_openai_error, post_bytes, request_bytes, send
from tests.server_process import ServerProcess

from .conftest import _save_tiny

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

SEED = 17
NAME = "tiny"
BODY_TIMEOUT = 1.0  # seconds: the few cases whose body never completes end this fast
REQUEST_TIMEOUT = 15.0  # seconds per case before it counts as a hang

COMPLETION = {"model": NAME, "prompt": "Hello there", "max_tokens": 4, "temperature": 0}
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 1-layer random Llama with SmolLM2's tokenizer and chat template (fast to start)."""
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    path = tmp_path_factory.mktemp("tiny-fuzz")
    _save_tiny(path, "llama", vocab_size=49152, num_hidden_layers=1, max_position_embeddings=512)
    load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]), fast=False).save_pretrained(path)
    args = ["--model", str(path), "--served-model-name", NAME, "--dtype", "fp32"]
    args += ["--body-timeout", str(BODY_TIMEOUT), "--header-timeout", "5"]
    proc = ServerProcess(*args).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.output()


# ---- values that are wrong for a field, by what the field is ----

WRONG_TYPES = ["5", [5], {"a": 1}, True, 1.5, "", [], None]  # None only where the field is required
INT_FIELDS = {  # field -> out-of-range values
    "max_tokens": [0, -1, 10**30, 513],
    "n": [0, -3, 129, 10**20],
    "top_k": [-2, 2**31, -(10**25)],
    "min_tokens": [-1, 10**6],
    "num_speculative_tokens": [-1],
}
FLOAT_FIELDS = {
    "temperature": [-0.1, 2.01, 1e300],
    "top_p": [0, -1, 1.5],
    "min_p": [-0.5, 1.01],
    "presence_penalty": [-2.5, 3],
    "frequency_penalty": [2.0001, -9],
    "repetition_penalty": [0, -1],
}
BOOL_FIELDS = ["stream", "ignore_eos", "include_stop_str_in_output", "skip_special_tokens"]
STR_FIELDS = ["model", "user"]  # may also get a lone surrogate
RAW_NUMBERS = [b"9" * 5000, b"-" + b"9" * 4500, b"1e999999", b"-1e400", b"NaN", b"Infinity", b"-Infinity"]
SURROGATES = ["\\ud800", "\\udfff", "\\udbff\\u0041", "x\\udc00y"]  # JSON escapes, written raw


def _completion_bad_fields() -> list[tuple[str, dict]]:
    bad = [
        ("prompt-empty-list", {"prompt": []}),
        ("prompt-int", {"prompt": 5}),
        ("prompt-mixed", {"prompt": ["a", 1]}),
        ("prompt-neg-token", {"prompt": [1, -2]}),
        ("prompt-token-oob", {"prompt": [1, 10**9]}),
        ("prompt-nested-3", {"prompt": [[[1]]]}),
        ("prompt-empty-ids", {"prompt": [[]]}),
        ("prompt-too-long", {"prompt": list(range(1, 600))}),
        ("logprobs-21", {"logprobs": 21}),
        ("logprobs-neg", {"logprobs": -1}),
        ("logprobs-bool", {"logprobs": True}),
        ("echo+logprobs-21", {"echo": True, "logprobs": 21}),
        ("prompt_logprobs-21", {"prompt_logprobs": 21}),
        ("prompt_logprobs-stream", {"prompt_logprobs": 1, "stream": True}),
        ("suffix", {"suffix": "x"}),
        ("best_of", {"best_of": 3, "n": 2}),
        ("logit_bias-range", {"logit_bias": {"5": 101}}),
        ("logit_bias-key", {"logit_bias": {"five": 1}}),
        ("logit_bias-neg-key", {"logit_bias": {"-3": 1}}),
        ("logit_bias-oob-key", {"logit_bias": {"1000000000": 1}}),
        ("logit_bias-huge-key", {"logit_bias": {"9" * 5000: 1}}),
        ("logit_bias-type", {"logit_bias": {"5": "x"}}),
        ("logit_bias-list", {"logit_bias": [5]}),
        ("stop-5", {"stop": ["a", "b", "c", "d", "e"]}),
        ("stop-int", {"stop": 5}),
        ("stop-list-int", {"stop": ["a", 1]}),
        ("stop-nested", {"stop": [["a"]]}),
        ("stop_token_ids-neg", {"stop_token_ids": [-1]}),
        ("stop_token_ids-str", {"stop_token_ids": ["1"]}),
        ("stream_options-type", {"stream": True, "stream_options": "yes"}),
        ("stream_options-field", {"stream": True, "stream_options": {"include_usage": "yes"}}),
        ("model-unknown", {"model": "gpt-4"}),
        ("missing-prompt", {"prompt": None}),
    ]
    return [(name, {**COMPLETION, **fields}) for name, fields in bad]


def _chat_bad_fields() -> list[tuple[str, dict]]:
    def msgs(*m):
        return {"messages": list(m)}

    bad = [
        ("messages-empty", msgs()),
        ("messages-type", {"messages": "hi"}),
        ("messages-null", {"messages": None}),
        ("message-not-object", msgs("hi")),
        ("role-bad", msgs({"role": "wizard", "content": "x"})),
        ("role-missing", msgs({"content": "x"})),
        ("role-int", msgs({"role": 1, "content": "x"})),
        ("content-missing", msgs({"role": "user"})),
        ("content-int", msgs({"role": "user", "content": 5})),
        ("content-dict", msgs({"role": "user", "content": {"text": "x"}})),
        ("part-type", msgs({"role": "user", "content": [{"type": "image_url", "image_url": "x"}]})),
        ("part-text-int", msgs({"role": "user", "content": [{"type": "text", "text": 3}]})),
        ("part-not-object", msgs({"role": "user", "content": ["x"]})),
        ("name-int", msgs({"role": "user", "content": "x", "name": 5})),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("tools-type", {"tools": {"type": "function"}}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("response_format-type", {"response_format": "json"}),
        ("logprobs-str", {"logprobs": "yes"}),
        ("logprobs-int", {"logprobs": 1}),
        ("top_logprobs-alone", {"top_logprobs": 2}),
        ("top_logprobs-21", {"logprobs": True, "top_logprobs": 21}),
        ("max_completion_tokens-0", {"max_completion_tokens": 0}),
        ("max_completion_tokens-str", {"max_completion_tokens": "4"}),
        ("stop-5", {"stop": ["a", "b", "c", "d", "e"]}),
        ("stop-dict", {"stop": {"a": 1}}),
        ("logit_bias-range", {"logit_bias": {"1": -100.5}}),
        ("logit_bias-inf", {"logit_bias": {"1": 1e999}}),
        ("model-unknown", {"model": "other"}),
    ]
    return [(name, {**CHAT, **fields}) for name, fields in bad]


def _mutations(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(case name, endpoint, whole request bytes), deterministic for one seed."""
    cases: list[tuple[str, str, bytes]] = []

    def add(name, endpoint, body, **kw):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cases.append((name, endpoint, post_bytes(endpoint, data, **kw)))

    endpoints = [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)]
    for endpoint, base in endpoints:
        tag = "cmpl" if base is COMPLETION else "chat"
        # Every typed field with a value of a wrong type, and with values out of range.
        for field in [*INT_FIELDS, *FLOAT_FIELDS, *BOOL_FIELDS, *STR_FIELDS]:
            for value in rng.sample(WRONG_TYPES[:-1], 3):
                if field in FLOAT_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    continue  # an int is a fine float; 1.5 may be in range
                if (field in STR_FIELDS and isinstance(value, str)) or (
                    field in BOOL_FIELDS and value is True
                ):
                    continue  # a fine value there
                add(f"{tag}-{field}-type-{value!r}", endpoint, {**base, field: value})
        for field, values in {**INT_FIELDS, **FLOAT_FIELDS}.items():
            for value in values:
                add(f"{tag}-{field}-range-{value!r}", endpoint, {**base, field: value})
        # Numbers no field can hold, written raw into the JSON text.
        for field in rng.sample([*INT_FIELDS, *FLOAT_FIELDS], 6):
            for raw in rng.sample(RAW_NUMBERS, 3):
                text = json.dumps({**base, field: 0}).encode()
                add(
                    f"{tag}-{field}-raw-{raw[:8]!r}",
                    endpoint,
                    text.replace(f'"{field}": 0'.encode(), f'"{field}": '.encode() + raw),
                )
        # Deep nesting in a random field (or as the body).
        for depth in (65, 300, 2_000, 50_000):
            field = rng.choice(
                ["prompt" if tag == "cmpl" else "messages", "stop", "tools", "logit_bias", "user"]
            )
            nested = b"[" * depth + b"]" * depth
            text = json.dumps({**base, field: 0}).encode()
            add(
                f"{tag}-deep-{field}-{depth}",
                endpoint,
                text.replace(f'"{field}": 0'.encode(), f'"{field}": '.encode() + nested),
            )
            add(f"{tag}-deep-object-{depth}", endpoint, b'{"a":' * depth + b"1" + b"}" * depth)
        # Lone surrogates in string fields.
        string_paths = ["model", "user", "stop", "stop_list"]
        string_paths.append("prompt" if tag == "cmpl" else "content")
        for where in string_paths:
            for s in rng.sample(SURROGATES, 2):
                body = dict(base)
                marker = "SURROGATE_HERE"
                if where == "stop_list":
                    body["stop"] = ["ok", marker]
                elif where == "content":
                    body["messages"] = [{"role": "user", "content": f"a{marker}b"}]
                else:
                    body[where] = f"a{marker}"
                add(
                    f"{tag}-surrogate-{where}-{s}",
                    endpoint,
                    json.dumps(body).encode().replace(marker.encode(), s.encode()),
                )
        # Raw (undecodable or surrogate-encoding) bytes inside a string.
        for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"):
            text = json.dumps(base).encode()
            target = b"Hello there" if tag == "cmpl" else b'"Hi"'
            add(f"{tag}-bytes-{bad!r}", endpoint, text.replace(target, target[:2] + bad + target[2:]))
        # Truncated JSON: every proper prefix of an object is invalid.
        text = json.dumps(base).encode()
        for cut in sorted(rng.sample(range(0, len(text) - 1), 8)):
            add(f"{tag}-truncated-{cut}", endpoint, text[:cut])
        # Not an object at all, or random bytes.
        for other in (b"[]", b'"text"', b"5", b"null", b"", b"{", b"{}}", b"{'a': 1}", b'{"a" 1}'):
            add(f"{tag}-not-object-{other!r}", endpoint, other)
        for i in range(8):
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
            add(f"{tag}-random-bytes-{i}", endpoint, junk.lstrip(b" \t\r\n{"))
        # Bad Content-Length and framing.
        body = json.dumps(base).encode()
        for value in ("abc", "-1", "1.5", "0x10", "9" * 30, "9" * 5000, "1, 2"):
            head = request_bytes("POST", endpoint, b"", content_length=False)
            cases.append(
                (
                    f"{tag}-content-length-{value}",
                    endpoint,
                    head[:-2] + f"Content-Length: {value}\r\n\r\n".encode() + body,
                )
            )
        head = request_bytes("POST", endpoint, b"", content_length=False)
        cases.append(
            (
                f"{tag}-content-length-short",
                endpoint,
                head[:-2] + f"Content-Length: {len(body) - 5}\r\n\r\n".encode() + body,
            )
        )
        cases.append(
            (
                f"{tag}-content-length-long",
                endpoint,
                head[:-2] + f"Content-Length: {len(body) + 5}\r\n\r\n".encode() + body,
            )
        )
        cases.append(
            (
                f"{tag}-chunked-unfinished",
                endpoint,
                head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n",
            )
        )
        cases.append(
            (
                f"{tag}-chunked-bad-size",
                endpoint,
                head[:-2] + b"Transfer-Encoding: chunked\r\n\r\nxyz\r\n" + body,
            )
        )
        cases.append(
            (
                f"{tag}-two-lengths",
                endpoint,
                head[:-2] + f"Content-Length: {len(body)}\r\nContent-Length: 3\r\n\r\n".encode() + body,
            )
        )
    for name, body in _completion_bad_fields():
        add(f"cmpl-{name}", "/v1/completions", body)
    for name, body in _chat_bad_fields():
        add(f"chat-{name}", "/v1/chat/completions", body)
    # Random single mutations of the valid bodies: a field replaced by a value from another field's list.
    pool = [v for vs in INT_FIELDS.values() for v in vs] + ["5", [5], {"a": 1}, True]
    for i in range(40):
        endpoint, base = rng.choice(endpoints)
        # Only fields for which every value of the pool is wrong (top_k=0 or min_tokens=0 are fine).
        field = rng.choice(["max_tokens", "n", "stop", "logprobs" if base is COMPLETION else "top_logprobs"])
        value = rng.choice(pool)
        if field == "stop" and isinstance(value, str):
            value = [value] * 5
        if (
            field == "max_tokens"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 1 <= value <= 500
        ):
            value = -value
        if (
            field in ("logprobs", "top_logprobs")
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value <= 20
        ):
            value = 21 + value
        add(f"random-{i}-{field}-{value!r}", endpoint, {**base, field: value})
    return cases


def test_fuzzed_requests_all_get_4xx_and_the_server_survives(server):
    cases = _mutations(random.Random(SEED))
    assert len(cases) >= 200, len(cases)
    start = time.perf_counter()
    failures = []
    for name, endpoint, data in cases:
        case_start = time.perf_counter()
        try:
            response = send(server.port, data, timeout=REQUEST_TIMEOUT)
            assert_openai_error(response)
        except Exception as e:  # collect all, report together
            failures.append(f"{name} ({endpoint}): {type(e).__name__}: {str(e)[:300]}")
        assert time.perf_counter() - case_start < REQUEST_TIMEOUT, name
    took = time.perf_counter() - start
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])
    print(f"{len(cases)} fuzzed requests in {took:.1f} s")
    ok = send(server.port, post_bytes("/v1/completions", COMPLETION))
    assert ok.status == 200, ok.body
    ok = send(server.port, post_bytes("/v1/chat/completions", CHAT))
    assert ok.status == 200, ok.body
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI" not in log and " 500 " not in log, log[-3000:]
