"""POST /v1/completions: text (or token-id) prompts, n samples each, echo, logprobs, streaming.

With echo and logprobs the prompt's tokens come first in the logprobs (the first with null), as
OpenAI's legacy API and vLLM give them; max_tokens 0 with echo scores the prompt alone. vLLM's
prompt_logprobs field (and echo with logprobs) adds each choice's `prompt_logprobs`."""

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import ClientGone, EventStreamResponse, parse_body, until_disconnect
from .protocol import CompletionRequest, echo_only
from .responses import (
    ResponseMeta,
    completion_choice,
    completion_chunk,
    completion_logprobs,
    completion_response,
    usage_chunk,
)
from .serving import (
    admit,
    check_model,
    check_ready,
    choice_error,
    encode,
    failure,
    now,
    prompt_params,
    request_usage,
    stream_events,
)
from .state import ServerState
from .token_text import prompt_logprobs_body


async def create_completion(state: ServerState, request: Request) -> Response:
    start = now()
    body = await parse_body(request, CompletionRequest)
    check_model(state, body.model)
    check_ready(state)
    tokenizer = state.tokenizer
    raw_prompts = body.prompts
    limit = state.max_prompt_chars
    prompts = [
        await encode(tokenizer, p, max_chars=limit) if isinstance(p, str) else list(p) for p in raw_prompts
    ]
    params = prompt_params(state, body, prompts)
    generation = await admit(state, prompts, params, body.n or 1, "cmpl", start)
    meta = ResponseMeta.new(state.config.model_name, is_chat=False)
    text_of = state.token_text
    echoes = [
        (p if isinstance(p, str) else tokenizer.decode(ids)) if body.echo else ""
        for p, ids in zip(raw_prompts, prompts, strict=True)
    ]
    want_logprobs = body.logprobs is not None
    only_prompt = echo_only(body)  # max_tokens 0: the one token generated is dropped

    def scored(c) -> dict | None:
        """vLLM's per-choice prompt_logprobs, when the prompt was scored."""
        if c.prompt_logprobs is None:
            return None
        return prompt_logprobs_body(prompts[c.prompt_index], c.prompt_logprobs, text_of)

    if not body.stream:
        try:
            choices = await until_disconnect(request, generation.run())
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        except Exception as e:
            raise failure(e) from None
        error = choice_error(choices)
        if error is not None:
            raise error
        out = []
        for c in choices:
            if only_prompt:
                c.token_ids, c.logprobs, c.text, c.finish_reason = [], [], "", "length"
            echo = echoes[c.prompt_index]
            lp = None
            if want_logprobs and body.echo and c.prompt_logprobs is not None:
                lp = echo_logprobs(
                    prompts[c.prompt_index], c.prompt_logprobs, c.token_ids, c.logprobs, text_of
                )
            elif want_logprobs:
                lp = completion_logprobs(c.token_ids, c.logprobs, text_of, len(echo))
            choice = completion_choice(c.index, echo + c.text, c.finish_reason, lp)
            if c.prompt_logprobs is not None:
                choice["prompt_logprobs"] = scored(c)
            out.append(choice)
        return JSONResponse(completion_response(meta, out, request_usage(prompts, choices)))

    include_usage = body.include_usage
    offsets: dict[int, int] = {}  # choice index -> text offset of its next token

    def chunks(choice, delta) -> list[dict]:
        out = []
        tokens, logprobs, text = delta.new_token_ids, delta.new_logprobs, delta.new_text
        reason = delta.finish_reason if delta.finished else None
        if only_prompt:
            choice.token_ids, tokens, logprobs, text = [], [], None, ""
            reason = "length" if delta.finished and reason != "abort" else reason
        lp = None
        if choice.index not in offsets:
            echo = echoes[choice.prompt_index]
            offsets[choice.index] = len(echo)
            if want_logprobs and echo and delta.prompt_logprobs is not None:
                # As vLLM: one chunk with the prompt and the first token, logprobs for both.
                ids = prompts[choice.prompt_index]
                lp = echo_logprobs(ids, delta.prompt_logprobs, tokens, logprobs or [], text_of)
                text = echo + text
            elif echo:
                out.append(completion_chunk(meta, choice.index, echo, include_usage=include_usage))
        if lp is None and want_logprobs and logprobs:
            lp = completion_logprobs(tokens, logprobs, text_of, offsets[choice.index])
        if lp is not None:
            offsets[choice.index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
        if text or lp or delta.finished:
            out.append(
                completion_chunk(
                    meta, choice.index, text, finish_reason=reason, logprobs=lp, include_usage=include_usage
                )
            )
        return out

    def tail() -> list[dict]:
        return [usage_chunk(meta, request_usage(prompts, generation.choices))] if include_usage else []

    return EventStreamResponse(stream_events(generation, chunks, tail))


def echo_logprobs(
    prompt_ids: list[int], prompt_logprobs: list, token_ids: list[int], logprobs: list, text_of
) -> dict:
    """The legacy logprobs object over the echoed prompt and then the generated tokens, as
    OpenAI and vLLM give it: the first prompt token has a null logprob and null top_logprobs;
    text_offset counts each token's text from the start of the prompt."""
    first = text_of(prompt_ids[0])
    merged = {"tokens": [first], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}
    offset = len(first)
    for ids, lps in ((prompt_ids[1:], prompt_logprobs[1:]), (token_ids, logprobs)):
        if ids:
            part = completion_logprobs(ids, lps, text_of, offset)
            for key, values in part.items():
                merged[key] += values
            offset = part["text_offset"][-1] + len(part["tokens"][-1])
    return merged
