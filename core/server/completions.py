"""POST /v1/completions: text (or token-id) prompts, n samples each, echo, logprobs, streaming."""

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import ClientGone, EventStreamResponse, parse_body, until_disconnect
from .protocol import CompletionRequest
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


async def create_completion(state: ServerState, request: Request) -> Response:
    start = now()
    body = await parse_body(request, CompletionRequest)
    check_model(state, body.model)
    check_ready(state)
    tokenizer = state.tokenizer
    raw_prompts = body.prompts
    prompts = [await encode(tokenizer, p) if isinstance(p, str) else list(p) for p in raw_prompts]
    params = prompt_params(state, body, prompts)
    generation = await admit(state, prompts, params, body.n or 1, "cmpl", start)
    meta = ResponseMeta.new(state.config.model_name, is_chat=False)
    text_of = state.token_text
    echoes = [
        (p if isinstance(p, str) else tokenizer.decode(ids)) if body.echo else ""
        for p, ids in zip(raw_prompts, prompts, strict=True)
    ]
    want_logprobs = body.logprobs is not None

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
            echo = echoes[c.prompt_index]
            lp = completion_logprobs(c.token_ids, c.logprobs, text_of, len(echo)) if want_logprobs else None
            out.append(completion_choice(c.index, echo + c.text, c.finish_reason, lp))
        return JSONResponse(completion_response(meta, out, request_usage(prompts, choices)))

    include_usage = body.include_usage
    offsets: dict[int, int] = {}  # choice index -> text offset of its next token

    def chunks(choice, delta) -> list[dict]:
        out = []
        if choice.index not in offsets:
            echo = echoes[choice.prompt_index]
            offsets[choice.index] = len(echo)
            if echo:
                out.append(completion_chunk(meta, choice.index, echo, include_usage=include_usage))
        lp = None
        if want_logprobs and delta.new_logprobs:
            lp = completion_logprobs(delta.new_token_ids, delta.new_logprobs, text_of, offsets[choice.index])
            offsets[choice.index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
        if delta.new_text or lp or delta.finished:
            reason = delta.finish_reason if delta.finished else None
            out.append(
                completion_chunk(
                    meta,
                    choice.index,
                    delta.new_text,
                    finish_reason=reason,
                    logprobs=lp,
                    include_usage=include_usage,
                )
            )
        return out

    def tail() -> list[dict]:
        return [usage_chunk(meta, request_usage(prompts, generation.choices))] if include_usage else []

    return EventStreamResponse(stream_events(generation, chunks, tail))
