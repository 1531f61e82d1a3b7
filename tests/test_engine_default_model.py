"""Acceptance on the default model: 16 prompts of 5..600 tokens run together in the engine
(fp32) give the same greedy tokens as each prompt run alone through transformers."""

import pytest
import torch

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import ALIASES, DEFAULT_MODEL, alias_path
from llmtool.core.models.loader import load_model
from llmtool.core.texts import play_text

from .conftest import hf_greedy

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

LENGTHS = [5, 600, 37, 250, 12, 480, 90, 160, 8, 333, 64, 400, 21, 128, 550, 75]
NEW_TOKENS = 16


def test_sixteen_mixed_prompts_match_transformers_alone():
    from transformers import AutoModelForCausalLM

    loaded = load_model(DEFAULT_MODEL, dtype="fp32", device="cpu")
    ids = loaded.tokenizer.encode(play_text("hamlet"))
    prompts = [ids[1000 * i : 1000 * i + n] for i, n in enumerate(LENGTHS)]
    engine = Engine(EngineConfig(kv_cache_memory=512 * 1024**2, max_num_batched_tokens=1024), loaded=loaded)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    got = engine.generate(prompts, params)

    path = alias_path(ALIASES[DEFAULT_MODEL])
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    for prompt, completion in zip(prompts, got, strict=True):
        assert completion.token_ids == hf_greedy(hf, prompt, NEW_TOKENS), f"prompt of {len(prompt)} tokens"
