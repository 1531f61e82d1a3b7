"""The engine end to end: batched, paged, chunked, preempted and prefix-cached runs give the
same greedy tokens as transformers running each prompt alone; seeded sampling reproduces."""

import pytest
import torch

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.loader import load_model

from .conftest import TINY_CASES, _save_tiny, hf_greedy

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
TOKEN_BYTES = {}  # filled per model: KV bytes per token in fp32


@pytest.fixture(scope="module", params=["llama-gqa", "mistral-sliding-window", "qwen2-bias-tied"])
def tiny(request, tmp_path_factory):
    family, overrides = TINY_CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = _save_tiny(path, family, **overrides)
    loaded = load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)
    return request.param, hf, loaded


def _prompts(vocab: int, lens: list[int], seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [(prefix or []) + torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


def _engine(loaded, kv_tokens: int = 4096, **overrides) -> Engine:
    bytes_per_token = loaded.spec.kv_bytes_per_token(4)
    return Engine(EngineConfig(kv_cache_memory=kv_tokens * bytes_per_token, **overrides), loaded=loaded)


def _tokens(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


def test_batched_engine_matches_transformers_alone(tiny):
    name, hf, loaded = tiny
    prompts = _prompts(loaded.spec.vocab_size, [1, 5, 17, 33, 64, 100, 7, 50])
    # A small token budget forces chunked prefills to share steps with running decodes.
    engine = _engine(loaded, max_num_batched_tokens=48)
    got = _tokens(engine.generate(prompts, GREEDY))
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == hf_greedy(hf, prompt, GREEDY.max_tokens), f"{name}: prompt of {len(prompt)} tokens"
    assert engine.block_manager.num_used_blocks == 0, "blocks leaked after every request finished"


def test_preemption_gives_the_same_tokens(tiny):
    _, _, loaded = tiny
    prompts = _prompts(loaded.spec.vocab_size, [30, 22, 41, 35, 28, 39, 25, 33], seed=1)
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    roomy = _engine(loaded, kv_tokens=8192)
    cramped = _engine(loaded, kv_tokens=160)  # 10 blocks: 8 sequences of ~80 tokens cannot all fit
    expected = _tokens(roomy.generate(prompts, params))
    assert _tokens(cramped.generate(prompts, params)) == expected
    assert cramped.stats().num_preemptions > 0, "the cramped run was meant to preempt"
    assert roomy.stats().num_preemptions == 0


def test_chunked_prefill_on_and_off_agree(tiny):
    _, _, loaded = tiny
    prompts = _prompts(loaded.spec.vocab_size, [90, 3, 60, 17], seed=2)
    chunked = _engine(loaded, max_num_batched_tokens=16, enable_chunked_prefill=True)
    whole = _engine(loaded, enable_chunked_prefill=False)
    assert _tokens(chunked.generate(prompts, GREEDY)) == _tokens(whole.generate(prompts, GREEDY))


def test_prefix_cache_hits_and_same_tokens(tiny):
    _, _, loaded = tiny
    shared = _prompts(loaded.spec.vocab_size, [64], seed=3)[0]
    prompts = _prompts(loaded.spec.vocab_size, [5, 9, 20], seed=4, prefix=shared)
    cached = _engine(loaded)
    first = cached.generate(prompts[:1], GREEDY)  # computes and caches the shared blocks
    rest = cached.generate(prompts[1:], GREEDY)
    assert [c.num_cached_tokens for c in rest] == [64, 64]
    assert cached.stats().prefix_cache_hits >= 128
    uncached = _engine(loaded, enable_prefix_caching=False)
    assert _tokens(first + rest) == _tokens(uncached.generate(prompts, GREEDY))


def test_seeded_sampling_is_reproducible_across_batches(tiny):
    _, _, loaded = tiny
    target = _prompts(loaded.spec.vocab_size, [12], seed=5)[0]
    others = _prompts(loaded.spec.vocab_size, [30, 4, 18], seed=6)
    seeded = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    free = SamplingParams(max_tokens=24, temperature=1.0, ignore_eos=True)
    alone = _engine(loaded).generate([target], seeded)[0].token_ids
    mixed = _engine(loaded).generate([others[0], target, others[1], others[2]], [free, seeded, free, free])
    assert mixed[1].token_ids == alone
    again = _engine(loaded).generate([target], seeded)[0].token_ids
    assert again == alone
    other_seed = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True)
    assert _engine(loaded).generate([target], other_seed)[0].token_ids != alone


def test_abort_frees_blocks_and_others_finish(tiny):
    _, _, loaded = tiny
    engine = _engine(loaded)
    a, b = _prompts(loaded.spec.vocab_size, [20, 20], seed=7)
    engine.add_request("a", a, GREEDY)
    engine.add_request("b", b, GREEDY)
    for _ in range(3):
        engine.step()
    engine.abort("a")
    while engine.has_unfinished():
        engine.step()
    done = engine.pop_finished("b")
    assert len(done.token_ids) == GREEDY.max_tokens and done.finish_reason == "length"
    assert engine.block_manager.num_used_blocks == 0


def test_text_prompt_without_a_tokenizer_is_a_usage_error(tiny):
    from llmtool.core.errors import UsageError

    _, _, loaded = tiny
    with pytest.raises(UsageError, match="no tokenizer"):
        _engine(loaded).add_request("t", "some text", GREEDY)


def test_out_of_vocabulary_ids_are_rejected_and_a_failed_batch_leaves_nothing(tiny):
    from llmtool.core.errors import UsageError

    _, _, loaded = tiny
    engine = _engine(loaded)
    with pytest.raises(UsageError, match="token ids must be in"):
        engine.add_request("bad", [1, loaded.spec.vocab_size], GREEDY)
    good = _prompts(loaded.spec.vocab_size, [5], seed=9)[0]
    with pytest.raises(UsageError):
        engine.generate([good, [-1]], GREEDY)  # the second prompt is bad: the first must not linger
    assert not engine.has_unfinished()
    assert len(engine.generate([good], GREEDY)[0].token_ids) == GREEDY.max_tokens


def test_fp16_runs_on_cpu_and_tiny_temperature_is_greedy(tiny):
    _, _, loaded = tiny
    prompt = _prompts(loaded.spec.vocab_size, [9], seed=10)[0]
    greedy = _engine(loaded).generate([prompt], GREEDY)[0].token_ids
    nearly = SamplingParams(max_tokens=20, temperature=1e-40, ignore_eos=True)
    assert _engine(loaded).generate([prompt], nearly)[0].token_ids == greedy
    half = load_model(str(loaded.source.path), dtype="fp16", device="cpu", with_tokenizer=False)
    out = Engine(EngineConfig(kv_cache_memory=4096 * half.spec.kv_bytes_per_token(2)), loaded=half).generate(
        [prompt], GREEDY
    )
    assert len(out[0].token_ids) == GREEDY.max_tokens
