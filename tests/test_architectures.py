"""Every registered architecture family through every check, on tiny random checkpoints
(tests/architectures.py) with transformers' fp32 forward as the oracle. A new family gets
all of these by adding its file and its tiny config.
"""

import copy

import pytest
import torch

from llmtool.core.engine.config import EngineConfig, SpeculativeConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.context import PrefillContext
from llmtool.core.models.loader import load_model
from llmtool.core.models.registry import families

from .architectures import TINY, VOCAB, WINDOW, save_tiny
from .conftest import hf_greedy

FAMILIES = sorted(TINY)
NEW_TOKENS = 32
BLOCK = 16
# bf16 against the fp32 oracle: our logits' RMS error may be at most this multiple of
# transformers' own in bf16.
BF16_TOLERANCE = 1.5


def test_every_family_has_a_tiny_config():
    assert sorted(f.name for f in families()) == FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def arch(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(path, request.param)
    loaded = load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)
    return request.param, path, hf, loaded


def _prompts(lens: list[int], seed: int, prefix: list[int] = ()) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lens]


def _engine(loaded, kv_tokens: int, **overrides) -> Engine:
    memory = kv_tokens * loaded.spec.kv_bytes_per_token(4)
    return Engine(EngineConfig(kv_cache_memory=memory, block_size=BLOCK, **overrides), loaded=loaded)


def test_logits_match_transformers(arch):
    name, _, hf, loaded = arch
    ids = _prompts([5 * WINDOW], seed=1)[0]
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0].float()  # [T, V]
        hidden = loaded.model(torch.tensor(ids), torch.arange(len(ids)), PrefillContext([len(ids)], loaded.spec))
        got = loaded.model.compute_logits(hidden)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logits - HF logits| = {diff:.2e}"


def test_parameter_count_equals_transformers(arch):
    name, _, hf, loaded = arch
    assert loaded.spec.num_params == hf.num_parameters(), name


def test_engine_greedy_equals_transformers_through_chunks_cache_hits_and_preemption(arch):
    """One engine run: prompts longer than every window, prefilled in chunks of 16 tokens,
    sharing a 2-block prefix cached by an earlier request, on a cache too small for all of
    them at once (so some are preempted and recomputed)."""
    name, _, hf, loaded = arch
    shared = _prompts([2 * BLOCK], seed=2)[0]
    first = shared + _prompts([9], seed=3)[0]
    prompts = _prompts([7, 20, 13, 26], seed=4, prefix=shared) + _prompts([45, 38], seed=5)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    engine = _engine(loaded, kv_tokens=14 * BLOCK, max_num_batched_tokens=BLOCK)
    got = [c.token_ids for c in engine.generate([first], params) + engine.generate(prompts, params)]
    for prompt, tokens in zip([first, *prompts], got, strict=True):
        assert tokens == hf_greedy(hf, prompt, NEW_TOKENS), f"{name}: prompt of {len(prompt)} tokens"
    stats = engine.stats()
    assert stats.prefix_cache_hits >= 2 * BLOCK, f"{name}: the shared prefix was not read from the cache"
    assert stats.num_preemptions > 0, f"{name}: the cramped run was meant to preempt"
    assert engine.block_manager.num_used_blocks == 0


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculation_equals_plain_greedy(arch, method):
    """n-gram prompt lookup, and a draft model (the model itself, so drafts are proposed and
    mostly accepted whatever the random weights do): the verified output is plain greedy's."""
    name, path, _, loaded = arch
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    # Prompts that repeat themselves (text, its greedy continuation, the text again), where
    # prompt lookup finds drafts, and one that does not.
    bases = _prompts([20, 20, 20], seed=6)
    continuations = [c.token_ids[:16] for c in _engine(loaded, 4096).generate(bases, params)]
    prompts = [b + c + b for b, c in zip(bases, continuations, strict=True)] + _prompts([30], seed=8)
    plain = [c.token_ids for c in _engine(loaded, 4096).generate(prompts, params)]
    config = SpeculativeConfig(method, str(path) if method == "draft" else None, num_speculative_tokens=3)
    spec = _engine(loaded, 4096, speculative=config)
    assert [c.token_ids for c in spec.generate(prompts, params)] == plain, name
    if method == "draft":
        assert spec.stats().spec_num_accepted_tokens > 0, f"{name}: no draft was accepted"


def test_bf16_logits_within_tolerance(arch):
    name, path, hf, _ = arch
    bf16 = load_model(str(path), dtype="bf16", device="cpu", with_tokenizer=False)
    ids = _prompts([3 * WINDOW], seed=9)[0]
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0].float()
        theirs = copy.deepcopy(hf).to(torch.bfloat16)(torch.tensor([ids])).logits[0].float()
        hidden = bf16.model(torch.tensor(ids), torch.arange(len(ids)), PrefillContext([len(ids)], bf16.spec))
        got = bf16.model.compute_logits(hidden)
    spread = expected.std().item()
    ours, hf_error = ((got - expected).pow(2).mean().sqrt().item() / spread,
                      (theirs - expected).pow(2).mean().sqrt().item() / spread)  # fmt: skip
    print(f"{name}: bf16 RMS logit error {ours:.4f} of the logits' spread, transformers' {hf_error:.4f}")
    assert ours <= BF16_TOLERANCE * hf_error, f"{name}: bf16 logits off by {ours:.3f} of their spread, HF's {hf_error:.3f}"
