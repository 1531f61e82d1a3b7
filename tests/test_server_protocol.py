"""OpenAI request validation: each bad input of the serve issue becomes a 400 with OpenAI's
error body naming the field; good requests map onto SamplingParams; no torch on import."""

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.errors import UsageError
from llmtool.core.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    check_token_ids,
    choice_params,
    from_validation_error,
    to_sampling_params,
)

USER = [{"role": "user", "content": "hi"}]


def _error(cls, body) -> RequestError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return from_validation_error(info.value)


def _assert_openai_error(err: RequestError, param, code):
    assert err.status == 400
    body = err.body()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert message and "\n" not in message
    if param:
        assert param in message
    json.dumps(body, allow_nan=False)  # the app can send it as is


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"prompt": "x", "temperature": -0.1}, "temperature", "invalid_value"),
        ({"prompt": "x", "temperature": 2.5}, "temperature", "invalid_value"),
        ({"prompt": "x", "temperature": "hot"}, "temperature", "invalid_type"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature", "invalid_value"),
        ({"prompt": "x", "top_p": 0}, "top_p", "invalid_value"),
        ({"prompt": "x", "top_p": 1.01}, "top_p", "invalid_value"),
        ({"prompt": "x", "n": 0}, "n", "invalid_value"),
        ({"prompt": "x", "n": "2"}, "n", "invalid_type"),
        ({"prompt": "x", "n": True}, "n", "invalid_type"),
        ({"prompt": "x", "max_tokens": "16"}, "max_tokens", "invalid_type"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_type"),
        ({"prompt": "x", "stop": 3}, "stop", "invalid_type"),
        ({"prompt": "x", "stream": "yes"}, "stream", "invalid_type"),
        (
            {"prompt": "x", "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "invalid_type",
        ),
        ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
        ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty", "invalid_value"),
        ({"prompt": "x", "top_k": -2}, "top_k", "invalid_value"),
        ({"prompt": "x", "top_k": 10**30}, "top_k", "invalid_value"),  # would overflow the sampler
        ({"prompt": "x", "min_p": 1.5}, "min_p", "invalid_value"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "invalid_value"),
        ({"prompt": "x", "logprobs": True}, "logprobs", "invalid_type"),
        ({"prompt": "x", "echo": "no"}, "echo", "invalid_type"),
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": []}, "prompt", "invalid_value"),
        ({"prompt": [1, "a"]}, "prompt", "invalid_type"),
        ({"prompt": [-1]}, "prompt", "invalid_type"),
        ({"prompt": [[1, 2], ["a"]]}, "prompt", "invalid_type"),
        ({"prompt": {"text": "x"}}, "prompt", "invalid_type"),
        ([1, 2], None, "invalid_type"),  # a body that is not an object
    ],
)
def test_completion_validation_errors(body, param, code):
    _assert_openai_error(_error(CompletionRequest, body), param, code)


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"messages": []}, "messages", "invalid_value"),
        ({}, "messages", "missing_required_parameter"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages[1].role", "invalid_value"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
            "messages[0].content",
            "invalid_type",
        ),
        ({"messages": USER, "logprobs": 5}, "logprobs", "invalid_type"),
        ({"messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid_value"),
        ({"messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens", "invalid_type"),
        ({"messages": USER, "temperature": -1}, "temperature", "invalid_value"),
    ],
)
def test_chat_validation_errors(body, param, code):
    _assert_openai_error(_error(ChatCompletionRequest, body), param, code)


def test_several_errors_are_counted_in_one_line():
    err = _error(CompletionRequest, {"prompt": "x", "n": 0, "top_p": 5})
    assert err.param == "n" and "(1 more error)" in err.message


def test_unknown_fields_are_ignored_and_nulls_mean_default():
    req = CompletionRequest.model_validate(
        {"prompt": "x", "foo": {"bar": 1}, "user": "u", "temperature": None, "n": None, "stop": None}
    )
    assert not hasattr(req, "foo")
    params = to_sampling_params(req, max_model_len=100, prompt_len=10)
    assert params.temperature == 1.0 and params.stop == () and params.max_tokens == 90
    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x", "extra": 1}], "parallel_tool_calls": True}
    )
    assert chat.messages[0].text == "x"


def test_json_input_validates_the_same_way():
    body = {"messages": USER, "temperature": 1, "stop": ["\n"], "stream": True}
    assert ChatCompletionRequest.model_validate_json(
        json.dumps(body)
    ) == ChatCompletionRequest.model_validate(body)
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(json.dumps({**body, "temperature": "1"}))
    assert from_validation_error(info.value).param == "temperature"


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_prompt_shapes_become_a_batch(prompt, expected):
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts == expected


def test_chat_messages_for_the_template():
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
                {"role": "system", "content": ""},
            ]
        }
    )
    assert req.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
        {"role": "system", "content": ""},
    ]


def test_include_usage_needs_a_stream():
    opts = {"stream_options": {"include_usage": True}}
    assert CompletionRequest.model_validate({"prompt": "x", "stream": True, **opts}).include_usage
    assert not CompletionRequest.model_validate({"prompt": "x", **opts}).include_usage
    assert not CompletionRequest.model_validate({"prompt": "x", "stream": True}).include_usage


def test_completion_fields_map_onto_sampling_params():
    req = CompletionRequest.model_validate(
        {
            "prompt": "x",
            "max_tokens": 20,
            "temperature": 0,
            "top_p": 0.9,
            "top_k": -1,
            "min_p": 0.05,
            "seed": -7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.1,
            "stop": ["", "END"],
            "stop_token_ids": [5],
            "ignore_eos": True,
            "min_tokens": 3,
            "logprobs": 2,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
    )
    assert to_sampling_params(req, max_model_len=64, prompt_len=4) == SamplingParams(
        max_tokens=20,
        min_tokens=3,
        temperature=0.0,
        top_p=0.9,
        top_k=0,
        min_p=0.05,
        seed=-7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        stop=("END",),
        stop_token_ids=(5,),
        ignore_eos=True,
        logprobs=2,
        include_stop_str_in_output=True,
        skip_special_tokens=False,
    )
    assert to_sampling_params(
        CompletionRequest(prompt="x", stop="\n"), max_model_len=8, prompt_len=1
    ).stop == ("\n",)
    assert (
        to_sampling_params(CompletionRequest(prompt="x", top_k=40), max_model_len=8, prompt_len=1).top_k == 40
    )


@pytest.mark.parametrize(
    "fields, logprobs",
    [
        ({}, None),
        ({"logprobs": False}, None),
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": 3}, 3),
    ],
)
def test_chat_logprobs_map_to_top_k(fields, logprobs):
    req = ChatCompletionRequest.model_validate({"messages": USER, **fields})
    assert to_sampling_params(req, max_model_len=32, prompt_len=5).logprobs == logprobs


def test_max_completion_tokens_wins_and_the_default_is_the_rest_of_the_context():
    req = ChatCompletionRequest.model_validate(
        {"messages": USER, "max_tokens": 5, "max_completion_tokens": 7}
    )
    assert to_sampling_params(req, max_model_len=32, prompt_len=5).max_tokens == 7
    req = ChatCompletionRequest.model_validate({"messages": USER})
    assert to_sampling_params(req, max_model_len=32, prompt_len=5).max_tokens == 27
    req = CompletionRequest(prompt="x", max_tokens=27)  # exactly fills the context: allowed
    assert to_sampling_params(req, max_model_len=32, prompt_len=5).max_tokens == 27


@pytest.mark.parametrize(
    "request_body, prompt_len, param, code",
    [
        ({"prompt": "x"}, 32, "prompt", "context_length_exceeded"),
        ({"prompt": "x"}, 40, "prompt", "context_length_exceeded"),
        ({"messages": USER}, 32, "messages", "context_length_exceeded"),
        ({"prompt": "x"}, 0, "prompt", "invalid_value"),
        ({"prompt": "x", "max_tokens": 0}, 5, "max_tokens", "invalid_value"),
        ({"prompt": "x", "max_tokens": -3}, 5, "max_tokens", "invalid_value"),
        ({"prompt": "x", "max_tokens": 28}, 5, "max_tokens", "context_length_exceeded"),
        ({"messages": USER, "max_completion_tokens": 0}, 5, "max_completion_tokens", "invalid_value"),
        (
            {"messages": USER, "max_completion_tokens": 100},
            5,
            "max_completion_tokens",
            "context_length_exceeded",
        ),
        ({"prompt": "x", "max_tokens": 4, "min_tokens": 5}, 5, "min_tokens", None),
        ({"messages": USER, "top_logprobs": 2}, 5, "top_logprobs", None),
        ({"prompt": "x", "logit_bias": {"5": 100.5}}, 5, "logit_bias", "invalid_value"),
        ({"messages": USER, "logit_bias": {"the": 1}}, 5, "logit_bias", "invalid_value"),
        ({"prompt": "x", "suffix": "end"}, 5, "suffix", "unsupported_parameter"),
        ({"prompt": "x", "best_of": 3}, 5, "best_of", "unsupported_value"),
        ({"prompt": "x", "prompt_logprobs": 1, "stream": True}, 5, "prompt_logprobs", "unsupported_value"),
        ({"prompt": "x", "echo": False, "max_tokens": 0}, 5, "max_tokens", "invalid_value"),
        ({"messages": USER, "tools": [{"type": "function"}]}, 5, "tools", "unsupported_parameter"),
        (
            {"messages": USER, "response_format": {"type": "json_object"}},
            5,
            "response_format",
            "unsupported_value",
        ),
    ],
)
def test_context_and_cross_field_errors(request_body, prompt_len, param, code):
    cls = ChatCompletionRequest if "messages" in request_body else CompletionRequest
    with pytest.raises(RequestError) as info:
        to_sampling_params(cls.model_validate(request_body), max_model_len=32, prompt_len=prompt_len)
    _assert_openai_error(info.value, param, code)


def test_accepted_neutral_values_of_unsupported_fields():
    for body in (
        {"prompt": "x", "logit_bias": {}, "best_of": 2, "n": 2, "suffix": "", "echo": True},
        {"messages": USER, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}},
    ):
        cls = ChatCompletionRequest if "messages" in body else CompletionRequest
        params = to_sampling_params(cls.model_validate(body), max_model_len=32, prompt_len=5)
        assert isinstance(params, SamplingParams) and params.max_tokens == 32 - 5


def test_choice_params_vary_the_seed_per_sample():
    seeded = SamplingParams(seed=41)
    assert [p.seed for p in choice_params(seeded, 3)] == [41, 42, 43]
    assert choice_params(seeded, 3)[0] == seeded
    unseeded = SamplingParams()
    assert choice_params(unseeded, 2) == [unseeded, unseeded]


def test_check_token_ids():
    check_token_ids([0, 5, 9], vocab_size=10)
    with pytest.raises(RequestError) as info:
        check_token_ids([1, 10], vocab_size=10)
    _assert_openai_error(info.value, "prompt", None)


def test_request_error_statuses_and_types():
    assert RequestError("x").type == "invalid_request_error"
    assert RequestError("x", status=404, code="model_not_found").body()["error"]["code"] == "model_not_found"
    assert RequestError("x", status=401).type == "invalid_request_error"
    assert RequestError("busy", status=429).type == "rate_limit_error"
    assert RequestError("x", status=503).type == "server_error"
    assert isinstance(RequestError("x"), UsageError)


def test_server_modules_import_no_torch():
    code = (
        "import sys; import llmtool.core.server.protocol, llmtool.core.server.responses, "
        "llmtool.core.server.metrics; print(sorted(m for m in ('torch', 'fastapi', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
