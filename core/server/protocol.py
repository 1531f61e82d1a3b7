"""OpenAI request bodies for /v1/completions and /v1/chat/completions: validation, OpenAI's error
body, and the mapping to SamplingParams.

Pure: no HTTP, no engine, no torch. The app parses the JSON (malformed JSON is its own 400),
validates with `CompletionRequest.model_validate(obj)`, turns a pydantic ValidationError into a
RequestError with `from_validation_error`, tokenizes, then calls `to_sampling_params`, which
also runs the checks that need the prompt length or span several fields.

Known fields are strictly typed (a string where a number belongs is a 400, as with OpenAI;
an int is fine for a float); unknown fields are ignored, as OpenAI does. Null means "default"
for every optional field. Response bodies are in responses.py.
"""

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic.functional_validators import WrapValidator, field_validator
from pydantic_core import PydanticCustomError

from ..engine.sampling_params import SamplingParams
from ..errors import UsageError
from .responses import error_body

_MAX_STOP = 4  # OpenAI accepts at most 4 stop sequences
_MAX_LOGPROBS = 20  # OpenAI's chat limit; our sampler's SamplingParams limit too


class RequestError(UsageError):
    """A request the server refuses: becomes `status` with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    @property
    def type(self) -> str:
        """OpenAI's error type for the status."""
        if self.status == 429:
            return "rate_limit_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def from_validation_error(error: ValidationError) -> RequestError:
    """The first error as one line naming its field; param is its path, e.g. 'messages[0].role'."""
    first = error.errors(include_url=False)[0]
    param = _param(first["loc"])
    kind = first["type"]
    if kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    else:
        code = "invalid_type" if kind.endswith("_type") or kind == "is_instance_of" else "invalid_value"
        what = "type" if code == "invalid_type" else "value"
        got = _short_repr(first.get("input"))
        shown = f" (got {got})" if got is not None else ""
        target = f"'{param}'" if param else "the request body"
        message = f"Invalid {what} for {target}: {first['msg']}{shown}."
    more = error.error_count() - 1
    if more:
        message += f" ({more} more error{'s' if more > 1 else ''})"
    return RequestError(message, param, code)


def _short_repr(value: Any, limit: int = 40) -> str | None:
    """repr(value) when it is at most `limit` characters; a long string or list is not
    rendered in full only to be dropped (a body may hold megabytes of them)."""
    if isinstance(value, str | bytes | list | dict) and len(value) > limit:
        return None
    got = repr(value)
    return got if len(got) <= limit else None


def _param(loc: tuple) -> str | None:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.isidentifier() and item.islower() and item not in {"str", "int", "float", "bool", "list"}:
            parts.append(f".{item}" if parts else item)  # other strings are union tags, not fields
    return "".join(parts) or None


def _one_of(message: str) -> WrapValidator:
    """Replace a union's per-member errors by one message that says what is accepted."""

    def validate(value: Any, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("union_type", message) from None

    return WrapValidator(validate)


TokenIds = list[Annotated[int, Field(ge=0)]]
Stop = Annotated[
    str | Annotated[list[str], Field(max_length=_MAX_STOP)],
    _one_of(f"expected a string or a list of at most {_MAX_STOP} strings"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool | None = False  # one last chunk with usage and no choices


class _SamplingFields(_Strict):
    """What both endpoints share. Extensions beyond OpenAI's fields are vLLM's."""

    model: str | None = None  # None: the served model (the app answers 404 for an unknown name)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: Stop | None = None  # empty strings are dropped
    max_tokens: int | None = None  # None: the rest of the context
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None  # None: OpenAI's 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None  # extension; -1 or 0 disables
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None  # extension
    seed: int | None = None  # any integer: the sampler takes it modulo 2**64
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None  # extension
    min_tokens: Annotated[int, Field(ge=0)] | None = None  # extension
    ignore_eos: bool | None = None  # extension (benchmarks)
    stop_token_ids: TokenIds | None = None  # extension
    include_stop_str_in_output: bool | None = None  # extension
    skip_special_tokens: bool | None = None  # extension
    num_speculative_tokens: Annotated[int, Field(ge=0)] | None = None  # extension: 0 turns speculation off
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    prompt_logprobs: Annotated[int, Field(ge=0, le=_MAX_LOGPROBS)] | None = None  # extension (vLLM): top-k
    user: str | None = None  # ignored

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


Prompt = Annotated[
    str | list[str] | TokenIds | list[TokenIds],
    _one_of("expected a string, a list of strings, a list of token ids (ints >= 0) or a list of such lists"),
]


class CompletionRequest(_SamplingFields):
    prompt: Prompt
    echo: bool | None = None  # the prompt text comes before the completion
    logprobs: Annotated[int, Field(ge=0, le=_MAX_LOGPROBS)] | None = None  # top-k per token
    suffix: str | None = None  # not supported (rejected when non-empty)
    best_of: Annotated[int, Field(ge=1)] | None = None  # only best_of == n (no re-ranking)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        if prompt == []:
            raise PydanticCustomError("empty", "expected at least one prompt")
        return prompt

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch: one prompt, or several. Choice index = prompt index x n + sample index."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


Content = Annotated[
    str | list[TextPart],
    _one_of("expected a string or a list of {'type': 'text', 'text': ...} parts"),
]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer "system"
    content: Content | None = Field(default=None, validate_default=True)  # None only for assistant
    name: str | None = None  # ignored

    @field_validator("content")
    @classmethod
    def _content_present(cls, content, info: ValidationInfo):
        role = info.data.get("role")
        if content is None and role != "assistant":
            raise PydanticCustomError("missing", "content is required for a {role} message", {"role": role})
        return content

    @property
    def text(self) -> str:
        """Text parts joined by newlines, as vLLM joins them."""
        c = self.content
        return c if isinstance(c, str) else "\n".join(part.text for part in c or [])


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = None  # wins over max_tokens, OpenAI's newer name
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=_MAX_LOGPROBS)] | None = None  # needs logprobs
    tools: list[Any] | None = None  # accepted only empty: no tool calling
    tool_choice: Any = None  # ignored without tools
    response_format: dict[str, Any] | None = None  # only {"type": "text"}

    def template_messages(self) -> list[dict[str, str]]:
        """Messages for the model's chat template: plain role/content strings."""
        roles = {"developer": "system"}
        return [{"role": roles.get(m.role, m.role), "content": m.text} for m in self.messages]


def to_sampling_params(
    request: CompletionRequest | ChatCompletionRequest, *, max_model_len: int, prompt_len: int
) -> SamplingParams:
    """The engine's SamplingParams for one prompt of `prompt_len` tokens, or RequestError."""
    is_chat = isinstance(request, ChatCompletionRequest)
    prompt_param = "messages" if is_chat else "prompt"
    _check_unsupported(request)
    if prompt_len < 1:
        raise RequestError(f"'{prompt_param}' gives an empty prompt.", prompt_param, "invalid_value")
    if prompt_len >= max_model_len:
        raise RequestError(
            f"'{prompt_param}' has {prompt_len} tokens and this model's maximum context length is "
            f"{max_model_len}: no room is left for a completion.",
            prompt_param,
            "context_length_exceeded",
        )
    max_param, max_tokens = "max_tokens", request.max_tokens
    if is_chat and request.max_completion_tokens is not None:
        max_param, max_tokens = "max_completion_tokens", request.max_completion_tokens
    if max_tokens is None:
        max_tokens = max_model_len - prompt_len
    elif max_tokens == 0 and echo_only(request):
        max_tokens = 1  # the prompt alone is scored: one token is generated and dropped, as vLLM does
    elif max_tokens < 1:
        raise RequestError(f"{max_param} must be at least 1, got {max_tokens}.", max_param, "invalid_value")
    elif prompt_len + max_tokens > max_model_len:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
            f"completion). Reduce the length of the prompt or {max_param}.",
            max_param,
            "context_length_exceeded",
        )
    min_tokens = request.min_tokens or 0
    if min_tokens > max_tokens:
        raise RequestError(f"min_tokens ({min_tokens}) exceeds {max_param} ({max_tokens}).", "min_tokens")
    if is_chat:
        if request.top_logprobs is not None and not request.logprobs:
            raise RequestError("top_logprobs requires logprobs to be true.", "top_logprobs")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
    else:
        logprobs = request.logprobs
    prompt_logprobs = request.prompt_logprobs
    if prompt_logprobs is None and not is_chat and request.echo and logprobs is not None:
        prompt_logprobs = logprobs  # the echoed prompt's tokens carry logprobs too
    logit_bias = _logit_bias(request.logit_bias)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(request.top_k or 0, 0),
            min_p=request.min_p or 0.0,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=request.repetition_penalty or 1.0,
            stop=_stop_strings(request.stop),
            stop_token_ids=tuple(request.stop_token_ids or ()),
            ignore_eos=bool(request.ignore_eos),
            logprobs=logprobs,
            include_stop_str_in_output=bool(request.include_stop_str_in_output),
            skip_special_tokens=request.skip_special_tokens is not False,
            num_speculative_tokens=request.num_speculative_tokens,
            prompt_logprobs=prompt_logprobs,
            logit_bias=logit_bias,
        )
    except UsageError as e:  # a rule of SamplingParams' own that the checks above missed
        raise RequestError(f"{e}.", None, "invalid_value") from None


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One SamplingParams per sample of an n > 1 request: a seeded request gets seed + i for
    sample i (as vLLM does), so the samples differ and the whole request still reproduces."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=params.seed + i) for i in range(n)]


def check_token_ids(token_ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    """Token ids the model has no embedding for are a 400, not a crash in the forward pass."""
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise RequestError(
            f"Token id {bad} in '{param}' is out of the vocabulary (size {vocab_size}).", param
        )


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    items = [stop] if isinstance(stop, str) else stop or []
    return tuple(s for s in items if s)


def echo_only(request: CompletionRequest | ChatCompletionRequest) -> bool:
    """A completion with echo and max_tokens 0: the prompt comes back (with its logprobs), alone."""
    return isinstance(request, CompletionRequest) and bool(request.echo) and request.max_tokens == 0


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token ids (JSON keys, so strings) to biases; the vocabulary bound is the
    server's check (check_token_ids)."""
    pairs = []
    for key, value in (bias or {}).items():
        try:
            token_id = int(key)
        except ValueError:
            token_id = -1
        if token_id < 0:
            raise RequestError(
                f"Invalid key {key!r} in 'logit_bias': keys are token ids.", "logit_bias", "invalid_value"
            )
        if not -100 <= value <= 100:
            raise RequestError(
                f"Invalid value {value} for token {key} in 'logit_bias': biases are in [-100, 100].",
                "logit_bias",
                "invalid_value",
            )
        pairs.append((token_id, float(value)))
    return tuple(pairs)


def _check_unsupported(request: CompletionRequest | ChatCompletionRequest) -> None:
    if request.prompt_logprobs is not None and request.stream:
        raise RequestError(
            "prompt_logprobs are not available when stream is true.", "prompt_logprobs", "unsupported_value"
        )
    if isinstance(request, CompletionRequest):
        if request.suffix:
            raise RequestError("suffix is not supported.", "suffix", "unsupported_parameter")
        if request.best_of is not None and request.best_of != (request.n or 1):
            raise RequestError("best_of is supported only equal to n.", "best_of", "unsupported_value")
        return
    if request.tools:
        raise RequestError("tools are not supported.", "tools", "unsupported_parameter")
    fmt = (request.response_format or {}).get("type", "text")
    if fmt != "text":
        raise RequestError(
            f"response_format {fmt!r} is not supported.", "response_format", "unsupported_value"
        )
