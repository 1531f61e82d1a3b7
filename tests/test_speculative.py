"""Speculative decoding in the engine, on tiny random models (fp32, fast).

Greedy: 32 speculating requests mixed with 16 that do not, in one engine with a cramped KV
cache (preemption), shared prefixes (prefix-cache hits), chunked prefill and stop ids, give
token for token what the engine gives without speculation; the prefix cache then serves
their blocks to new requests without changing a token. A drafter that knows the answer
but corrupts a quarter of its tokens makes runs of accepted tokens and rejections at every
offset. Sampled: the joint distribution of the two tokens one verification step emits
matches the target model's exact one (chi-square, vocabulary of 8, fixed seeds, p > 0.001),
with a draft model proposing from its own distribution.
"""

import random

import pytest
import torch

from llmtool.core.engine.config import EngineConfig, SpeculativeConfig
from llmtool.core.engine.drafter import Draft
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.errors import UsageError
from llmtool.core.models.loader import load_model

from .conftest import _save_tiny
from .test_speculative_rejection import P_MIN, chi_square_p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec-tiny")
    _save_tiny(path, "llama")
    return path, load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)


def _engine(loaded, kv_tokens: int, speculative=None, **overrides) -> Engine:
    kv = kv_tokens * loaded.spec.kv_bytes_per_token(4)
    return Engine(EngineConfig(kv_cache_memory=kv, speculative=speculative, **overrides), loaded=loaded)


class CorruptOracle:
    """Proposes the known greedy continuation with a quarter of its tokens changed."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], vocab: int, seed: int = 0):
        self.answers = answers
        self.vocab = vocab
        self.rng = random.Random(seed)

    def propose(self, seqs, num_tokens):
        drafts = {}
        for seq in seqs:
            answer = self.answers[tuple(seq.prompt_token_ids)]
            ids = answer[seq.num_output_tokens : seq.num_output_tokens + num_tokens[seq.seq_id]]
            ids = [(t + 1) % self.vocab if self.rng.random() < 0.25 else t for t in ids]
            if ids:
                drafts[seq.seq_id] = Draft(ids)
        return drafts

    def release(self, seq_id):
        pass


def _run_checked(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """Run requests to the end, checking the block manager after every step."""
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(f"r{i}", prompt, params)
    while engine.has_unfinished():
        engine.step()
        engine.block_manager.check_invariants()
    assert engine.block_manager.num_used_blocks == 0, "blocks leaked"
    return [engine.pop_finished(f"r{i}").token_ids for i in range(len(requests))]


def test_greedy_speculation_gives_the_same_tokens_amid_other_traffic(tiny):
    _, loaded = tiny
    vocab = loaded.spec.vocab_size
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(3, vocab, (32,), generator=g).tolist()  # two full blocks
    prompts = [
        (shared if i % 3 == 0 else []) + torch.randint(3, vocab, (int(n),), generator=g).tolist()
        for i, n in enumerate(torch.randint(5, 30, (48,), generator=g))
    ]
    spec_params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    plain_params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True, num_speculative_tokens=0)
    reference = _engine(loaded, 8192)
    expected = [c.token_ids for c in reference.generate(prompts, spec_params)]
    # Some requests end on a stop id that comes mid-output: often inside a verified run.
    stop_params = [SamplingParams(max_tokens=32, temperature=0, stop_token_ids=(e[17],)) for e in expected]
    requests = [
        (p, plain_params if i % 3 == 1 else stop_params[i] if i % 5 == 0 else spec_params)
        for i, p in enumerate(prompts)
    ]
    expected = [
        e[: e.index(r[1].stop_token_ids[0]) + 1] if r[1].stop_token_ids else e
        for e, r in zip(expected, requests, strict=True)
    ]
    assert sum(r[1].num_speculative_tokens is None for r in requests) == 32

    # 32 blocks of 16 for 48 requests of up to 93 tokens; 64 tokens a step: chunked prefills.
    engine = _engine(loaded, 512, SpeculativeConfig(num_speculative_tokens=5), max_num_batched_tokens=64)
    engine.spec.drafter = CorruptOracle({tuple(p): e for p, e in zip(prompts, expected, strict=True)}, vocab)
    got = _run_checked(engine, requests)
    for i, (tokens, want) in enumerate(zip(got, expected, strict=True)):
        assert tokens == want, f"request {i}"
    stats = engine.stats()
    assert stats.num_preemptions > 0, "the cramped cache was meant to preempt"
    assert stats.prefix_cache_hits > 0
    assert 0.3 < stats.spec_num_accepted_tokens / stats.spec_num_draft_tokens < 0.95
    assert stats.spec_num_emitted_tokens / stats.spec_num_verify_steps > 1.5

    # What verification cached serves later requests: prompts that extend the outputs.
    follow = [(p + e[:17], plain_params) for p, e in zip(prompts[:12], expected[:12], strict=True)]
    hits_before = engine.stats().prefix_cache_hits
    again = _run_checked(engine, follow)
    assert engine.stats().prefix_cache_hits - hits_before >= 12 * 16
    assert again == [c.token_ids for c in reference.generate([p for p, _ in follow], plain_params)]


def test_prompt_lookup_and_a_draft_model_keep_greedy_tokens(tiny):
    path, loaded = tiny
    vocab = loaded.spec.vocab_size
    g = torch.Generator().manual_seed(1)
    # Repeated segments give prompt lookup something to find (the random model rarely copies).
    prompts = []
    for n in (6, 11, 23):
        segment = torch.randint(3, vocab, (n,), generator=g).tolist()
        prompts.append(segment * 3 + segment[:4])
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    expected = [c.token_ids for c in _engine(loaded, 4096).generate(prompts, params)]
    ngram = _engine(loaded, 4096, SpeculativeConfig(num_speculative_tokens=4, ngram_min=1))
    assert _run_checked(ngram, [(p, params) for p in prompts]) == expected
    assert ngram.stats().spec_num_draft_tokens > 0
    # The target as its own draft: every draft is kept (the rule, not luck, decides that).
    draft = _engine(loaded, 4096, SpeculativeConfig("draft", str(path), num_speculative_tokens=3))
    assert _run_checked(draft, [(p, params) for p in prompts]) == expected
    stats = draft.stats()
    assert stats.spec_num_accepted_tokens == stats.spec_num_draft_tokens > 0
    assert draft.spec.drafter.block_manager.num_used_blocks == 0, "the draft's blocks leaked"


def test_a_draft_model_with_another_vocabulary_is_refused(tiny, tmp_path):
    _, loaded = tiny
    _save_tiny(tmp_path, "llama", vocab_size=100)
    with pytest.raises(UsageError, match="vocabulary of 100 tokens"):
        _engine(loaded, 1024, SpeculativeConfig("draft", str(tmp_path)))


def test_sampled_speculation_keeps_the_target_distribution(tmp_path):
    vocab, n = 8, 2000
    target_hf = _save_tiny(tmp_path / "target", "llama", vocab_size=vocab, initializer_range=0.3)
    # The same random draw at another scale: related, not equal, distributions.
    _save_tiny(tmp_path / "draft", "llama", vocab_size=vocab, initializer_range=0.25)
    loaded = load_model(str(tmp_path / "target"), dtype="fp32", device="cpu", with_tokenizer=False)
    prompt = [3, 5, 7, 1, 4]
    spec = SpeculativeConfig("draft", str(tmp_path / "draft"), num_speculative_tokens=2, adaptive=False)
    engine = _engine(loaded, 4 * n * 16 // 2, spec, max_num_seqs=512)
    # max_tokens 4: the prefill gives t1, then one verification step drafts 2 and emits t2..t4.
    requests = [
        (prompt, SamplingParams(max_tokens=4, temperature=1.0, ignore_eos=True, seed=i)) for i in range(n)
    ]
    outputs = _run_checked(engine, requests)
    stats = engine.stats()
    assert stats.spec_num_verify_steps >= n
    rate = stats.spec_num_accepted_tokens / stats.spec_num_draft_tokens
    assert 0.2 < rate < 0.95, f"acceptance {rate:.2f}: the test needs both outcomes"

    # The exact joint of (t2, t3) under the target: sum over t1 of p(t1) p(t2|t1) p(t3|t1,t2).
    with torch.no_grad():
        prefixes = [prompt] + [prompt + [a] for a in range(vocab)]
        prefixes += [prompt + [a, b] for a in range(vocab) for b in range(vocab)]
        probs = [torch.softmax(target_hf(torch.tensor([p])).logits[0, -1].float(), -1) for p in prefixes]
    p1, p2, p3 = probs[0], torch.stack(probs[1:9]), torch.stack(probs[9:]).view(vocab, vocab, vocab)
    joint = torch.einsum("a,ab,abc->bc", p1, p2, p3).flatten()  # [V*V]
    counts = torch.zeros(vocab * vocab)
    for tokens in outputs:
        counts[tokens[1] * vocab + tokens[2]] += 1
    p_value = chi_square_p(counts, joint)
    assert p_value > P_MIN, f"p = {p_value:.2g}"
