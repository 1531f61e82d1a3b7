"""Speculation on the default model: an instruct model asked to repeat a passage copies it,
so prompt lookup's drafts are mostly accepted, and the greedy tokens are the same as
without speculation (fp32), for that prompt and for one with nothing to copy, run together."""

import pytest

from llmtool.core.engine.config import EngineConfig, SpeculativeConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.loader import load_model
from llmtool.core.texts import plain_text, play_text

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def test_copying_prompt_accepts_most_drafts_and_keeps_greedy_tokens():
    loaded = load_model(DEFAULT_MODEL, dtype="fp32", device="cpu")
    tok = loaded.tokenizer
    text = plain_text(play_text("hamlet"))
    passage = text[text.index("\n\n", 30000) + 2 :][:400]
    asks = [f"Repeat the following text exactly, word for word:\n\n{passage}", "Why is the sky blue?"]
    prompts = [
        tok.encode(
            tok.apply_chat_template(
                [{"role": "user", "content": a}], tokenize=False, add_generation_prompt=True
            )
        )
        for a in asks
    ]
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    config = EngineConfig(kv_cache_memory=64 * 1024**2)
    expected = [c.token_ids for c in Engine(config, loaded=loaded).generate(prompts, params)]
    spec = Engine(
        EngineConfig(kv_cache_memory=64 * 1024**2, speculative=SpeculativeConfig(num_speculative_tokens=6)),
        loaded=loaded,
    )
    got = spec.generate(prompts, params)
    assert [c.token_ids for c in got] == expected
    copied = tok.decode(expected[0]).splitlines()
    assert sum(line in passage for line in copied if line) >= 4, "the model was meant to copy the passage"
    stats = spec.stats()
    assert stats.spec_num_accepted_tokens / stats.spec_num_draft_tokens > 0.6
    assert stats.spec_num_emitted_tokens / stats.spec_num_verify_steps > 3
