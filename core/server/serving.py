"""What /v1/completions and /v1/chat/completions share: model-name and readiness checks,
prompt checks, admission (429 on a full queue), token texts for logprobs, usage, and the
error mapping of a generation that fails midway."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

from ..engine.async_engine import EngineDeadError, QueueFullError
from ..engine.sampling_params import SamplingParams
from ..errors import UsageError
from .generation import Choice, Generation, GenerationTimeout
from .prompt_limit import check_prompt_chars
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    check_token_ids,
    to_sampling_params,
)
from .responses import SSE_DONE, sse, usage
from .state import ServerState


def check_ready(state: ServerState) -> None:
    if state.status == state.LOADING:
        raise RequestError("The model is still loading; retry shortly.", None, "model_loading", status=503)
    health, body = state.health
    if health != 200:
        raise RequestError(f"The server cannot serve: {body.get('error')}", None, "unavailable", status=503)


def check_model(state: ServerState, requested: str | None) -> None:
    if requested is not None and requested != state.config.model_name:
        raise RequestError(
            f"The model '{requested}' does not exist; this server serves '{state.config.model_name}'.",
            "model",
            "model_not_found",
            status=404,
        )


def prompt_params(
    state: ServerState, request: CompletionRequest | ChatCompletionRequest, prompts: list[list[int]]
) -> list[SamplingParams]:
    """SamplingParams per prompt (each one's length bounds max_tokens), or RequestError."""
    param = "messages" if isinstance(request, ChatCompletionRequest) else "prompt"
    for ids in prompts:
        if len(ids) < state.max_model_len:  # a longer one is refused below, without a look at each id
            check_token_ids(ids, state.vocab_size, param)
    params = [
        to_sampling_params(request, max_model_len=state.max_model_len, prompt_len=len(ids)) for ids in prompts
    ]
    check_token_ids([t for t, _ in params[0].logit_bias], state.vocab_size, "logit_bias")
    return params


async def admit(
    state: ServerState,
    prompts: list[list[int]],
    params: list[SamplingParams],
    n: int,
    prefix: str,
    start: float,
) -> Generation:
    """Every choice admitted, or a 429 (queue full), 400 (engine refused) or 503 (engine down)."""
    try:
        return await Generation.start_all(
            state.engine,
            prompts,
            params,
            n,
            f"{prefix}-{uuid.uuid4().hex}",
            state.metrics,
            start,
            state.config.request_timeout,
        )
    except QueueFullError:
        raise RequestError(
            "The server is at capacity: too many requests are queued. Retry later.",
            None,
            "queue_full",
            status=429,
        ) from None
    except EngineDeadError as e:
        raise RequestError(f"The engine has stopped: {e}", None, "engine_dead", status=503) from None
    except UsageError as e:
        raise RequestError(f"{e}.", None, "invalid_value") from None


def failure(error: BaseException) -> RequestError:
    """The RequestError for a generation that failed after admission."""
    if isinstance(error, GenerationTimeout):
        return RequestError(f"{str(error).capitalize()}.", None, "request_timeout", status=408)
    if isinstance(error, EngineDeadError):
        return RequestError(f"The engine has stopped: {error}", None, "engine_dead", status=503)
    return RequestError(f"Internal error: {error!r}", None, "internal_error", status=500)


def choice_error(choices: list[Choice]) -> RequestError | None:
    """A 500 when a choice ended with an error (the engine failed that request alone)."""
    for choice in choices:
        if choice.finish_reason == "error":
            return RequestError(
                f"Generation failed for this request: {choice.error}", None, "generation_failed", status=500
            )
    return None


def request_usage(prompts: list[list[int]], choices: list[Choice]) -> dict:
    """Prompt tokens once per prompt, completion tokens over every choice; cached prompt tokens
    are what the least lucky sample of each prompt found in the prefix cache."""
    cached = [min(c.num_cached_tokens for c in choices if c.prompt_index == p) for p in range(len(prompts))]
    return usage(sum(map(len, prompts)), sum(len(c.token_ids) for c in choices), sum(cached))


async def stream_events(
    generation: Generation,
    chunks: Callable[[Choice, object], list[dict]],
    tail: Callable[[], list[dict]],
) -> AsyncIterator[bytes]:
    """SSE bytes: `chunks(choice, delta)` per delta, `tail()` after the last, then [DONE]. A
    failure midway (timeout, engine error, a choice that failed) becomes one error event."""
    try:
        async for choice, delta in generation.events():
            if delta.finish_reason == "error":
                raise RequestError(
                    f"Generation failed for this request: {choice.error}", None, "generation_failed", 500
                )
            for chunk in chunks(choice, delta):
                yield sse(chunk)
        for chunk in tail():
            yield sse(chunk)
    except RequestError as e:
        yield sse(e.body())
    except (GenerationTimeout, EngineDeadError) as e:
        yield sse(failure(e).body())
    yield SSE_DONE


_INLINE_TEXT = 16384  # characters: shorter prompts tokenize in well under a millisecond


async def encode(
    tokenizer, text: str, add_special_tokens: bool = True, max_chars: int = 0, param: str = "prompt"
) -> list[int]:
    """Tokenize on the event loop when it is quick; a long prompt goes to a worker thread so
    it does not stall every other stream's chunks (the Rust tokenizer releases the GIL). A
    text of more than `max_chars` characters (state.max_prompt_chars; 0: no check) is
    refused before tokenizing: it cannot fit the context."""
    if len(text) <= _INLINE_TEXT:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        await asyncio.sleep(0)  # a batch of many such prompts must not hold the loop throughout
        return ids
    return await asyncio.to_thread(_encode_checked, tokenizer, text, add_special_tokens, max_chars, param)


def _encode_checked(tokenizer, text: str, add_special_tokens: bool, max_chars: int, param: str) -> list[int]:
    check_prompt_chars(tokenizer, text, max_chars, param)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def now() -> float:
    return time.monotonic()
