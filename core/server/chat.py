"""POST /v1/chat/completions: messages through the model's chat template, n samples, logprobs
with top_logprobs, streaming with a role chunk first and usage last when asked for."""

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http import ClientGone, EventStreamResponse, parse_body, until_disconnect
from .protocol import ChatCompletionRequest, RequestError
from .responses import ResponseMeta, chat_choice, chat_chunk, chat_logprobs, chat_response, usage_chunk
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


async def render_prompt(tokenizer, body: ChatCompletionRequest, max_chars: int = 0) -> list[int]:
    """The messages through the model's chat template, tokenized as the template wrote them
    (a text over `max_chars` characters is refused untokenized: serving.encode)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise RequestError(
            "This model has no chat template; use /v1/completions.", "messages", "no_chat_template"
        )
    try:
        text = tokenizer.apply_chat_template(
            body.template_messages(), add_generation_prompt=True, tokenize=False
        )
    except Exception as e:  # the template's own raise_exception (e.g. roles out of order)
        raise RequestError(f"The chat template rejected the messages: {e}", "messages") from None
    return await encode(tokenizer, text, add_special_tokens=False, max_chars=max_chars, param="messages")


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    start = now()
    body = await parse_body(request, ChatCompletionRequest)
    check_model(state, body.model)
    check_ready(state)
    prompts = [await render_prompt(state.tokenizer, body, state.max_prompt_chars)]
    params = prompt_params(state, body, prompts)
    generation = await admit(state, prompts, params, body.n or 1, "chatcmpl", start)
    meta = ResponseMeta.new(state.config.model_name, is_chat=True)
    text_of, bytes_of = state.token_text, state.token_bytes
    want_logprobs = bool(body.logprobs)

    if not body.stream:
        try:
            choices = await until_disconnect(request, generation.run())
        except ClientGone:
            return Response(status_code=499)
        except Exception as e:
            raise failure(e) from None
        error = choice_error(choices)
        if error is not None:
            raise error
        out = [
            chat_choice(
                c.index,
                c.text,
                c.finish_reason,
                chat_logprobs(c.token_ids, c.logprobs, text_of, bytes_of) if want_logprobs else None,
            )
            for c in choices
        ]
        response = chat_response(meta, out, request_usage(prompts, choices))
        if choices[0].prompt_logprobs is not None:  # vLLM's extension, beside the choices
            response["prompt_logprobs"] = prompt_logprobs_body(
                prompts[0], choices[0].prompt_logprobs, text_of
            )
        return JSONResponse(response)

    include_usage = body.include_usage
    opened: set[int] = set()

    def chunks(choice, delta) -> list[dict]:
        out = []
        if choice.index not in opened:
            opened.add(choice.index)
            out.append(chat_chunk(meta, choice.index, role=True, include_usage=include_usage))
        lp = None
        if want_logprobs and delta.new_logprobs:
            lp = chat_logprobs(delta.new_token_ids, delta.new_logprobs, text_of, bytes_of)
        if delta.new_text or lp:
            out.append(
                chat_chunk(
                    meta, choice.index, content=delta.new_text, logprobs=lp, include_usage=include_usage
                )
            )
        if delta.finished:
            out.append(
                chat_chunk(meta, choice.index, finish_reason=delta.finish_reason, include_usage=include_usage)
            )
        return out

    def tail() -> list[dict]:
        return [usage_chunk(meta, request_usage(prompts, generation.choices))] if include_usage else []

    return EventStreamResponse(stream_events(generation, chunks, tail))
