"""Request-level behaviour on the default model: stop strings, finish reasons, logprobs, streaming deltas."""

import math

import pytest

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(kv_cache_memory=256 * 1024**2, dtype="fp32"))


def _chat(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


def test_eos_length_and_stop_string_finish_reasons(engine):
    prompt = engine.tokenizer.encode(
        _chat(engine, "What is the capital of France?"), add_special_tokens=False
    )
    free = engine.generate([prompt], SamplingParams(max_tokens=40, temperature=0))[0]
    assert free.finish_reason == "stop" and free.token_ids[-1] in engine.eos_token_ids  # EOS ends it
    assert "Paris" in free.text and "<|im_end|>" not in free.text
    short = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0))[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 3
    stopped = engine.generate([prompt], SamplingParams(max_tokens=40, temperature=0, stop=(" is",)))[0]
    assert stopped.finish_reason == "stop"
    assert free.text.startswith(stopped.text) and " is" not in stopped.text
    assert len(stopped.token_ids) < len(free.token_ids)
    kept = engine.generate(
        [prompt], SamplingParams(max_tokens=40, temperature=0, stop=(" is",), include_stop_str_in_output=True)
    )[0]
    assert kept.text == stopped.text + " is"


def test_logprobs_and_streaming_deltas(engine):
    prompt = engine.tokenizer.encode(_chat(engine, "Name a colour."), add_special_tokens=False)
    engine.add_request(
        "stream", prompt, SamplingParams(max_tokens=8, temperature=0, logprobs=2, ignore_eos=True)
    )
    deltas = []
    while engine.has_unfinished():
        deltas += [o for o in engine.step() if o.request_id == "stream"]
    done = engine.pop_finished("stream")
    assert len(deltas) == 8 and deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    assert [t for d in deltas for t in d.new_token_ids] == done.token_ids
    assert "".join(d.new_text for d in deltas) == done.text
    for token, lp in zip(done.token_ids, done.logprobs, strict=True):
        assert len(lp.top) == 2 and lp.top[0][1] >= lp.top[1][1]
        assert lp.top[0][0] == token  # greedy picks the most likely token
        assert math.isclose(lp.logprob, lp.top[0][1]) and lp.logprob <= 0
