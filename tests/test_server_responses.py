"""OpenAI response bodies and SSE chunks: every dict parses into a mirror of openai-python's
types that forbids unknown keys (and into openai's own types when the package is installed),
streams keep OpenAI's order (role chunk, deltas, finish, usage-only chunk, [DONE])."""

import json
import math
from typing import Literal, NamedTuple

import pytest
from pydantic import BaseModel, ConfigDict

from llmtool.core.server.responses import (
    SSE_DONE,
    ResponseMeta,
    chat_choice,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_choice,
    completion_chunk,
    completion_logprobs,
    completion_response,
    error_body,
    sse,
    usage,
    usage_chunk,
)


class LP(NamedTuple):  # duck-types the sampler's TokenLogprobs without importing torch
    logprob: float
    top: list[tuple[int, float]]


VOCAB = {1: "Hello", 2: ",", 3: " world", 4: "é", 5: " there"}
text_of = VOCAB.__getitem__


# ---- mirrors of openai-python's types (src/openai/types), with unknown keys forbidden ----


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PromptDetails(_M):
    cached_tokens: int | None = None


class Usage(_M):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails | None = None


class CompletionLogprobs(_M):
    text_offset: list[int] | None = None
    token_logprobs: list[float] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None


class CompletionChoice(_M):
    finish_reason: Literal["stop", "length", "content_filter"] | None  # None only in stream chunks
    index: int
    logprobs: CompletionLogprobs | None
    text: str


class Completion(_M):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"]
    system_fingerprint: str | None = None
    usage: Usage | None = None


class TopLogprob(_M):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_M):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Message(_M):
    content: str | None
    refusal: str | None = None
    role: Literal["assistant"]


class ChatChoice(_M):
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
    index: int
    logprobs: ChoiceLogprobs | None = None
    message: Message


class ChatCompletion(_M):
    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    object: Literal["chat.completion"]
    system_fingerprint: str | None = None
    usage: Usage | None = None


class Delta(_M):
    content: str | None = None
    refusal: str | None = None
    role: Literal["developer", "system", "user", "assistant", "tool"] | None = None


class ChunkChoice(_M):
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] | None = None
    index: int
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_M):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"]
    system_fingerprint: str | None = None
    usage: Usage | None = None


def _events(stream: bytes) -> list:
    """Parse SSE bytes back into JSON objects and the final '[DONE]'."""
    assert stream.endswith(b"\n\n")
    events = []
    for block in stream.decode("utf-8").split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


CMPL = ResponseMeta("cmpl-1", "smollm2-135m", 1_700_000_000, is_chat=False)
CHAT = ResponseMeta("chatcmpl-1", "smollm2-135m", 1_700_000_000, is_chat=True)


def test_meta_ids_and_timestamps():
    meta = ResponseMeta.new("m", is_chat=True)
    assert meta.id.startswith("chatcmpl-") and isinstance(meta.created, int)
    assert ResponseMeta.new("m", is_chat=False, created=5).id.startswith("cmpl-")
    assert ResponseMeta.new("m", is_chat=False).id != ResponseMeta.new("m", is_chat=False).id


def test_usage():
    assert usage(7, 5) == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    with_cache = Usage.model_validate(usage(7, 5, cached_tokens=4))
    assert with_cache.prompt_tokens_details.cached_tokens == 4


def test_completion_response_with_logprobs():
    lps = [LP(-0.1, [(1, -0.1), (5, -2.0)]), LP(-0.5, [(3, -0.4)]), LP(-math.inf, [(2, -0.01)])]
    logprobs = completion_logprobs([1, 2, 3], lps, text_of, text_offset=4)
    assert logprobs["tokens"] == ["Hello", ",", " world"]
    assert logprobs["text_offset"] == [4, 9, 10]
    assert logprobs["token_logprobs"] == [-0.1, -0.5, -9999.0]  # -inf clamped: JSON has no infinity
    assert logprobs["top_logprobs"][0] == {"Hello": -0.1, " there": -2.0}
    assert logprobs["top_logprobs"][1] == {" world": -0.4, ",": -0.5}  # the sampled token is always in
    choices = [completion_choice(0, "Hello, world", "length", logprobs), completion_choice(1, "Hi", "stop")]
    body = completion_response(CMPL, choices, usage(3, 5))
    parsed = Completion.model_validate(json.loads(json.dumps(body, allow_nan=False)))
    assert parsed.choices[0].logprobs.tokens == ["Hello", ",", " world"]
    assert parsed.usage.total_tokens == 8


def test_completion_stream():
    chunks = [
        completion_chunk(CMPL, 0, "Hello", include_usage=True),
        completion_chunk(CMPL, 0, ", world", finish_reason="stop", include_usage=True),
        usage_chunk(CMPL, usage(3, 2)),
    ]
    events = _events(b"".join(sse(c) for c in chunks) + sse("[DONE]"))
    assert events[-1] == "[DONE]"
    parsed = [Completion.model_validate(e) for e in events[:-1]]
    assert [c.choices[0].finish_reason for c in parsed[:2]] == [None, "stop"]
    assert all("usage" in e and e["usage"] is None for e in events[:2])
    assert parsed[-1].choices == [] and parsed[-1].usage.completion_tokens == 2
    assert "usage" not in completion_chunk(CMPL, 0, "x")  # without include_usage, no usage key


def test_chat_response_with_logprobs():
    lps = [LP(-0.2, [(1, -0.2), (4, -1.5)]), LP(-0.3, [])]
    logprobs = chat_logprobs([1, 4], lps, text_of)
    first, second = logprobs["content"]
    assert first == {
        "token": "Hello",
        "logprob": -0.2,
        "bytes": list(b"Hello"),
        "top_logprobs": [
            {"token": "Hello", "logprob": -0.2, "bytes": list(b"Hello")},
            {"token": "é", "logprob": -1.5, "bytes": [0xC3, 0xA9]},
        ],
    }
    assert second["top_logprobs"] == [] and second["bytes"] == [0xC3, 0xA9]
    half = chat_logprobs([4], [LP(-1.0, [])], text_of, token_bytes=lambda _: b"\xc3")
    assert half["content"][0]["bytes"] == [0xC3]
    body = chat_response(CHAT, [chat_choice(0, "Helloé", "stop", logprobs)], usage(9, 2))
    parsed = ChatCompletion.model_validate(json.loads(json.dumps(body, allow_nan=False)))
    assert parsed.choices[0].message.content == "Helloé" and parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].logprobs.content[1].top_logprobs == []


def test_chat_stream_of_two_choices_with_usage():
    chunks = []
    for i in range(2):
        chunks.append(chat_chunk(CHAT, i, role=True, include_usage=True))
    chunks.append(chat_chunk(CHAT, 0, content="Hel", include_usage=True))
    chunks.append(chat_chunk(CHAT, 1, content="Hi", include_usage=True))
    chunks.append(chat_chunk(CHAT, 0, content="lo", finish_reason="length", include_usage=True))
    chunks.append(chat_chunk(CHAT, 1, finish_reason="stop", include_usage=True))
    chunks.append(usage_chunk(CHAT, usage(4, 3)))
    events = _events(b"".join(map(sse, chunks)) + SSE_DONE)
    assert events[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert {c.id for c in parsed} == {"chatcmpl-1"} and {c.created for c in parsed} == {CHAT.created}
    for i in range(2):  # each choice opens with role "assistant" and empty content
        opening = parsed[i].choices[0]
        assert opening.index == i and opening.delta.role == "assistant" and opening.delta.content == ""
    text = {0: "", 1: ""}
    finish = {}
    for chunk in parsed[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert text == {0: "Hello", 1: "Hi"} and finish == {0: "length", 1: "stop"}
    assert events[-2]["choices"] == [] and parsed[-1].usage.total_tokens == 7
    assert all(e["usage"] is None for e in events[:-2])
    assert chat_chunk(CHAT, 0, finish_reason="stop")["choices"][0]["delta"] == {}


def test_sse_framing():
    assert sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse("[DONE]") == SSE_DONE == b"data: [DONE]\n\n"
    assert sse("line1\nline2") == b"data: line1\ndata: line2\n\n"
    with pytest.raises(ValueError):
        sse({"x": math.nan})  # never send invalid JSON


def test_error_body_shape():
    body = error_body("bad", param="n", code="invalid_value")
    assert body == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "invalid_value"}
    }
    assert _events(sse(body)) == [body]


def test_bodies_parse_with_the_openai_package_when_installed():
    openai = pytest.importorskip("openai")
    from openai.types.chat import ChatCompletion as OpenAIChat
    from openai.types.chat import ChatCompletionChunk as OpenAIChunk

    completion = openai.types.Completion.model_validate(
        completion_response(CMPL, [completion_choice(0, "x", "stop")], usage(1, 1))
    )
    assert completion.choices[0].text == "x" and completion.usage.total_tokens == 2
    chat = OpenAIChat.model_validate(chat_response(CHAT, [chat_choice(0, "x", "stop")], usage(1, 1)))
    assert chat.choices[0].message.content == "x" and chat.choices[0].finish_reason == "stop"
    first = OpenAIChunk.model_validate(chat_chunk(CHAT, 0, role=True, include_usage=True))
    assert first.choices[0].delta.role == "assistant" and first.usage is None
    last = OpenAIChunk.model_validate(usage_chunk(CHAT, usage(1, 1)))
    assert last.choices == [] and last.usage.completion_tokens == 1
