"""A request that breaks (NaN logits, a failing detokenizer, a forward pass that raises) ends
with finish_reason "error"; every other request carries on with the tokens it would have
produced alone, and no garbage K/V survives in the cache for later requests."""

from types import SimpleNamespace

import pytest
import torch

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.detokenizer import Detokenizer
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.loader import load_model

from .conftest import _save_tiny

POISON = 77  # its embedding row is NaN: any prompt holding it yields NaN logits
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    path = tmp_path_factory.mktemp("poisoned")
    hf = _save_tiny(path, "llama")
    with torch.no_grad():
        hf.model.embed_tokens.weight[POISON] = float("nan")
    hf.save_pretrained(path, safe_serialization=True)
    return load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)


def _engine(loaded, **overrides) -> Engine:
    kv = 512 * loaded.spec.kv_bytes_per_token(4)
    return Engine(EngineConfig(kv_cache_memory=kv, block_size=4, **overrides), loaded=loaded)


CLEAN = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23, 24, 25, 26, 27, 28], [40, 41, 42]]


def test_nan_logits_fail_only_their_request(poisoned):
    alone = [c.token_ids for c in _engine(poisoned).generate(CLEAN, GREEDY)]
    engine = _engine(poisoned)
    prompts = [CLEAN[0], [5, 6, POISON, 8, 9, 10, 11, 12, 13], CLEAN[1], CLEAN[2]]
    done = engine.generate(prompts, GREEDY)
    assert [c.finish_reason for c in done] == ["length", "error", "length", "length"]
    assert "non-finite" in done[1].error and done[1].token_ids == []
    assert [done[0].token_ids, done[2].token_ids, done[3].token_ids] == alone
    # The poisoned request's blocks were wiped and left the prefix cache: later requests that
    # reuse those blocks (the cache is small) and share its clean prefix still match.
    assert not torch.isnan(engine.runner.kv_cache).any()
    again = engine.generate([[5, 6, 7, 8, 9, 10, 11]] + CLEAN[1:], GREEDY)
    assert [c.token_ids for c in again] == alone
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_used_blocks == 0


def test_a_fault_found_in_a_later_prefill_chunk_leaves_no_cached_block(poisoned):
    # Chunks of 4: a poison in the first chunk goes unseen until the last chunk samples, by
    # which time its blocks were cached; every block the request alone held must go.
    engine = _engine(poisoned, max_num_batched_tokens=4)
    done = engine.generate([[1, POISON, 3, 4, 5, 6, 7, 8, 9, 10], CLEAN[0]], GREEDY)
    assert done[0].finish_reason == "error" and done[1].finish_reason == "length"
    assert not torch.isnan(engine.runner.kv_cache).any()
    hits = engine.block_manager.prefix_hits
    again = engine.generate([[1, POISON, 3, 4, 5, 6, 7, 8, 9, 10]], GREEDY)[0]
    assert engine.block_manager.prefix_hits == hits and again.finish_reason == "error"


def test_clean_requests_after_a_chunked_fault_match_a_fresh_engine(poisoned):
    engine = _engine(poisoned, max_num_batched_tokens=4)
    done = engine.generate([[1, 2, 3, 4, 5, 6, POISON], CLEAN[0]], GREEDY)
    assert done[0].finish_reason == "error" and done[1].finish_reason == "length"
    assert not torch.isnan(engine.runner.kv_cache).any()
    clean = engine.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9]], GREEDY)[0]
    assert clean.token_ids == _engine(poisoned).generate([[1, 2, 3, 4, 5, 6, 7, 8, 9]], GREEDY)[0].token_ids


def test_a_detokenizer_error_fails_its_request_alone(poisoned, monkeypatch):
    engine = _engine(poisoned)
    engine.tokenizer = object()  # any tokenizer: push is patched below

    def push(self, token_ids):
        if self.prompt_token_ids[0] == 20:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "broken")
        return SimpleNamespace(text="", stop_hit=False)

    monkeypatch.setattr(Detokenizer, "push", push)
    monkeypatch.setattr(Detokenizer, "flush", lambda self: "")
    monkeypatch.setattr(Detokenizer, "__init__", _fake_init)
    done = engine.generate(CLEAN, GREEDY)
    assert [c.finish_reason for c in done] == ["length", "error", "length"]
    assert "detokenizing failed" in done[1].error and len(done[1].token_ids) == 1


def _fake_init(self, tokenizer, prompt_token_ids, params):
    self.prompt_token_ids = prompt_token_ids
    self._chunks = []


def test_a_forward_pass_that_raises_fails_its_batch_not_the_engine(poisoned, monkeypatch):
    engine = _engine(poisoned)
    real_run = engine.runner.run
    calls = {"n": 0}

    def flaky(out):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real_run(out)

    monkeypatch.setattr(engine.runner, "run", flaky)
    first = engine.generate(CLEAN[:2], GREEDY)
    assert [c.finish_reason for c in first] == ["error", "error"] and "injected" in first[0].error
    second = engine.generate(CLEAN, GREEDY)  # the engine still serves
    assert [c.token_ids for c in second] == [c.token_ids for c in _engine(poisoned).generate(CLEAN, GREEDY)]
