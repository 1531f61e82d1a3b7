"""OpenAI response bodies, SSE chunks and error bodies for completions and chat completions,
as plain dicts ready for json.dumps.

Shapes follow the OpenAI API reference (openai-python's Completion, ChatCompletion,
ChatCompletionChunk, CompletionUsage, ChatCompletionTokenLogprob). Pure: the app brings text,
token ids, logprobs and counts; nothing here touches the engine, HTTP or torch.

A chat stream, per choice: `chat_chunk(meta, i, role=True)` (role "assistant", content ""),
then content deltas, then one chunk with finish_reason; after every choice has finished, with
stream_options.include_usage, one `usage_chunk` (choices []); then `SSE_DONE`. With
include_usage every other chunk carries "usage": null, as OpenAI's do.
"""

import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the sampler imports torch; the server's import must not
    from ..engine.sampler import TokenLogprobs

SSE_DONE = b"data: [DONE]\n\n"
_LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity; vLLM clamps to the same floor

TokenText = Callable[[int], str]  # token id -> its text (e.g. the tokenizer's decode([id]))


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code=None
) -> dict:
    """OpenAI's error shape; a stream that fails midway sends it as one SSE event before [DONE]."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class ResponseMeta:
    """What every body and chunk of one response repeats."""

    id: str  # "cmpl-..." or "chatcmpl-..."
    model: str  # the served model name
    created: int  # Unix seconds; the same on every chunk of a stream
    is_chat: bool

    @classmethod
    def new(cls, model: str, *, is_chat: bool, created: int | None = None) -> "ResponseMeta":
        prefix = "chatcmpl" if is_chat else "cmpl"
        stamp = int(time.time()) if created is None else created
        return cls(f"{prefix}-{uuid.uuid4().hex}", model, stamp, is_chat)

    def head(self, *, chunk: bool) -> dict:
        if self.is_chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"  # OpenAI's completion chunks use the same object name
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    """Token counts for a whole request: prompt tokens once per prompt (not per sample),
    completion tokens summed over every choice. cached_tokens: prompt tokens from the prefix cache."""
    out = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def _logprob(value: float) -> float:
    return _LOGPROB_FLOOR if math.isnan(value) else max(value, _LOGPROB_FLOOR)


def completion_logprobs(
    token_ids: Sequence[int],
    logprobs: "Sequence[TokenLogprobs]",
    token_text: TokenText,
    text_offset: int = 0,
) -> dict:
    """The legacy completions logprobs object for these tokens. top_logprobs maps text to logprob
    for the k most likely tokens plus the sampled one (so up to k + 1 entries, as OpenAI says);
    tokens with the same text share one key (the likelier wins). text_offset: where the first
    token starts in the choice's text (the prompt's length with echo; in a stream, the previous
    chunk's last offset plus its last token's length)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token_id, lp in zip(token_ids, logprobs, strict=True):
        text = token_text(token_id)
        top: dict[str, float] = {}
        for alt_id, alt_lp in lp.top:
            top.setdefault(token_text(alt_id), _logprob(alt_lp))
        top.setdefault(text, _logprob(lp.logprob))
        tokens.append(text)
        token_logprobs.append(_logprob(lp.logprob))
        top_logprobs.append(top)
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


def chat_logprobs(
    token_ids: Sequence[int],
    logprobs: "Sequence[TokenLogprobs]",
    token_text: TokenText,
    token_bytes: Callable[[int], bytes] | None = None,
) -> dict:
    """The chat logprobs object: per token its text, logprob, UTF-8 bytes and the top_logprobs
    alternatives (as many as the request's top_logprobs). token_bytes: the token's exact bytes,
    for tokens that are part of a multi-byte character; by default the UTF-8 of its text."""

    def entry(token_id: int, value: float) -> dict:
        text = token_text(token_id)
        raw = token_bytes(token_id) if token_bytes is not None else text.encode("utf-8")
        return {"token": text, "logprob": _logprob(value), "bytes": list(raw)}

    content = [
        {**entry(token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
        for token_id, lp in zip(token_ids, logprobs, strict=True)
    ]
    return {"content": content, "refusal": None}


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_response(meta: ResponseMeta, choices: list[dict], usage: dict) -> dict:
    return {**meta.head(chunk=False), "choices": choices, "usage": usage, "system_fingerprint": None}


def completion_chunk(
    meta: ResponseMeta,
    index: int,
    text: str,
    *,
    finish_reason: str | None = None,
    logprobs: dict | None = None,
    include_usage: bool = False,
) -> dict:
    """One streamed completion delta for choice `index`; the last one of a choice has finish_reason."""
    choice = completion_choice(index, text, finish_reason, logprobs)
    return _chunk(meta, [choice], include_usage)


def chat_message(content: str) -> dict:
    return {"role": "assistant", "content": content, "refusal": None}


def chat_choice(index: int, content: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {
        "index": index,
        "message": chat_message(content),
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_response(meta: ResponseMeta, choices: list[dict], usage: dict) -> dict:
    return {**meta.head(chunk=False), "choices": choices, "usage": usage, "system_fingerprint": None}


def chat_chunk(
    meta: ResponseMeta,
    index: int,
    *,
    role: bool = False,
    content: str | None = None,
    finish_reason: str | None = None,
    logprobs: dict | None = None,
    include_usage: bool = False,
) -> dict:
    """One streamed chat delta for choice `index`. role=True makes the opening chunk
    (role "assistant", content "" unless given); the closing chunk has finish_reason."""
    delta: dict = {}
    if role:
        delta["role"] = "assistant"
        delta["content"] = content or ""
    elif content is not None:
        delta["content"] = content
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return _chunk(meta, [choice], include_usage)


def usage_chunk(meta: ResponseMeta, usage: dict) -> dict:
    """The stream's last chunk under stream_options.include_usage: no choices, the request's usage."""
    return {**meta.head(chunk=True), "choices": [], "usage": usage, "system_fingerprint": None}


def _chunk(meta: ResponseMeta, choices: list[dict], include_usage: bool) -> dict:
    out = {**meta.head(chunk=True), "choices": choices, "system_fingerprint": None}
    if include_usage:
        out["usage"] = None
    return out


def sse(data: dict | str) -> bytes:
    """One server-sent event: a dict as compact JSON, or a string as is ("[DONE]" -> SSE_DONE).
    A string's line breaks become several data lines, as the SSE format requires."""
    text = (
        json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if isinstance(data, dict)
        else data
    )
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode("utf-8")
