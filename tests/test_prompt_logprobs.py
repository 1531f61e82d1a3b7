"""Prompt logprobs in the engine: every prompt token's logprob (and rank and top-k) equals
transformers' fp32 log_softmax, across chunked prefill, a prefix-cache hit (requests asking for
them skip reading the cache) and preemption; requests that do not ask get none and their tokens
do not change; logits leave a bf16 model unrounded (fp32)."""

import pytest
import torch

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.loader import load_model

from .conftest import _save_tiny

TOL = 1e-4
K = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-prompt-logprobs")
    hf = _save_tiny(path, "llama")
    loaded = load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)
    return hf, loaded, path


def _engine(loaded, kv_tokens: int = 4096, **overrides) -> Engine:
    bytes_per_token = loaded.spec.kv_bytes_per_token(loaded.model.dtype.itemsize)
    return Engine(EngineConfig(kv_cache_memory=kv_tokens * bytes_per_token, **overrides), loaded=loaded)


def _prompts(vocab: int, lens: list[int], seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [(prefix or []) + torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


def hf_prompt_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """transformers' fp32 log_softmax at every position [T, V] (row i scores token i + 1)."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def assert_matches(hf, ids: list[int], got, k: int = K) -> None:
    assert len(got) == len(ids) and got[0] is None
    ref = hf_prompt_logprobs(hf, ids)  # [T, V]
    for i in range(1, len(ids)):
        row, lp = ref[i - 1], got[i]
        expected = float(row[ids[i]])
        assert lp.logprob == pytest.approx(expected, abs=TOL), f"token {i} of {len(ids)}"
        assert lp.rank == int((row >= row[ids[i]]).sum()), f"rank of token {i}"
        top_values, top_ids = row.topk(k)
        assert [t for t, _ in lp.top] == top_ids.tolist(), f"top-{k} of token {i}"
        assert [v for _, v in lp.top] == pytest.approx(top_values.tolist(), abs=TOL)


def test_prompt_longer_than_the_chunk_matches_transformers(tiny):
    hf, loaded, _ = tiny
    prompts = _prompts(loaded.spec.vocab_size, [100, 37, 1, 64], seed=1)
    engine = _engine(loaded, max_num_batched_tokens=24)  # the 100-token prompt takes 5+ chunks
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, prompt_logprobs=K)
    done = engine.generate(prompts, params)
    for prompt, c in zip(prompts, done, strict=True):
        assert_matches(hf, prompt, c.prompt_logprobs)
    assert engine.block_manager.num_used_blocks == 0


def test_prefix_cache_hit_is_recomputed_for_prompt_logprobs(tiny):
    hf, loaded, _ = tiny
    shared = _prompts(loaded.spec.vocab_size, [48], seed=2)[0]
    first, second, third = _prompts(loaded.spec.vocab_size, [9, 21, 5], seed=3, prefix=shared)
    engine = _engine(loaded, max_num_batched_tokens=32)
    plain = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    scored = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, prompt_logprobs=K)
    engine.generate([first], plain)  # caches the shared blocks
    [hit] = engine.generate([second], plain)
    assert hit.num_cached_tokens == 48 and hit.prompt_logprobs is None
    [owed] = engine.generate([third], scored)
    assert owed.num_cached_tokens == 0  # cached K/V have no logits: recomputed
    assert_matches(hf, third, owed.prompt_logprobs)
    # The same prompt again, scored and not: the scored one is identical, the plain one still hits.
    [again, reuse] = engine.generate([third, third], [scored, plain])
    assert again.prompt_logprobs == owed.prompt_logprobs
    assert reuse.num_cached_tokens > 0 and reuse.token_ids == again.token_ids


def test_preemption_scores_each_prompt_token_once(tiny):
    hf, loaded, _ = tiny
    prompts = _prompts(loaded.spec.vocab_size, [30, 22, 41, 35, 28, 39, 25, 33], seed=4)
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, prompt_logprobs=1)
    roomy = _engine(loaded, kv_tokens=8192)
    cramped = _engine(loaded, kv_tokens=160, max_num_batched_tokens=20)  # preempts, some mid-prefill
    expected = roomy.generate(prompts, params)
    got = cramped.generate(prompts, params)
    assert cramped.stats().num_preemptions > 0, "the cramped run was meant to preempt"
    for prompt, c, e in zip(prompts, got, expected, strict=True):
        assert c.token_ids == e.token_ids
        assert_matches(hf, prompt, c.prompt_logprobs, k=1)


def test_requests_that_do_not_ask_get_none_and_the_same_tokens(tiny):
    _, loaded, _ = tiny
    prompts = _prompts(loaded.spec.vocab_size, [40, 17, 60], seed=5)
    plain = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    scored = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, prompt_logprobs=0)
    engine = _engine(loaded, max_num_batched_tokens=32)
    alone = engine.generate(prompts, plain)
    mixed = engine.generate(prompts, [plain, scored, plain])
    assert [c.token_ids for c in mixed] == [c.token_ids for c in alone]
    assert mixed[0].prompt_logprobs is None and mixed[2].prompt_logprobs is None
    assert len(mixed[1].prompt_logprobs) == 17 and all(lp.top == [] for lp in mixed[1].prompt_logprobs[1:])
    # No request asks: the runner hands back no prompt rows at all.
    engine.add_request("x", prompts[0], plain)
    out = engine.scheduler.schedule()
    assert engine.runner.run(out).prompt_hidden is None


def test_prompt_logprobs_reach_the_first_delta_only(tiny):
    _, loaded, _ = tiny
    [prompt] = _prompts(loaded.spec.vocab_size, [30], seed=6)
    engine = _engine(loaded, max_num_batched_tokens=8)
    engine.add_request(
        "r", prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=2)
    )
    deltas = []
    while engine.has_unfinished():
        deltas += engine.step()
    assert len(deltas[0].prompt_logprobs) == 30
    assert all(d.prompt_logprobs is None for d in deltas[1:])


def test_bf16_logits_are_not_rounded(tiny, monkeypatch):
    # Plain torch linears: CPUs without AVX512-BF16 cannot pack bf16 weights for oneDNN.
    monkeypatch.setenv("LLMTOOL_CPU_KERNELS", "0")
    _, _, path = tiny
    loaded = load_model(str(path), dtype="bf16", device="cpu", with_tokenizer=False)
    weight = loaded.model.lm_head.weight.detach().clone()
    engine = _engine(loaded)
    hidden = torch.randn(4, loaded.spec.hidden_size).bfloat16()
    logits = engine.runner.head(hidden)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, hidden.float() @ weight.float().T, rtol=1e-6, atol=1e-5)
    assert (logits.bfloat16().float() != logits).float().mean() > 0.5  # bf16 would round nearly all
    rounded = Engine(engine.config.__class__(**{**vars(engine.config), "fp32_logits": False}), loaded=loaded)
    assert torch.equal(rounded.runner.head(hidden), rounded.runner.head(hidden).bfloat16().float())


# ---- through HTTP: /v1/completions echo + logprobs, prompt_logprobs in completions and chat ----


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, transformers model, tokenizer) on a tiny random model, fp32, 16-token chunks."""
    from transformers import AutoTokenizer

    from .server_process import ServerProcess
    from .tiny_served import save_tiny_served

    path = tmp_path_factory.mktemp("served")
    hf = save_tiny_served(path)
    args = (
        "--model",
        str(path),
        "--dtype",
        "fp32",
        "--max-num-batched-tokens",
        "16",
        "--kv-cache-memory",
        "64MiB",
    )
    server = ServerProcess(*args).wait_ready(timeout=300)
    yield server, hf, AutoTokenizer.from_pretrained(str(path))
    assert server.stop() == 0, server.output()


def _post(server, path: str, body: dict) -> dict:
    import httpx

    r = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _check_echo(hf, tokenizer, ids: list[int], lp: dict, num_generated: int, k: int) -> None:
    """The legacy logprobs object of an echoed prompt: its tokens first (the first null)."""
    ref = hf_prompt_logprobs(hf, ids)
    assert len(lp["tokens"]) == len(ids) + num_generated
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=TOL), i
        assert len(lp["top_logprobs"][i]) <= k + 1
    texts = [tokenizer.decode([t]) for t in ids]
    assert lp["tokens"][: len(ids)] == texts
    offsets = [sum(map(len, lp["tokens"][:i])) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == offsets


def test_http_echo_logprobs_match_transformers(served):
    server, hf, tokenizer = served
    g = torch.Generator().manual_seed(7)
    vocab = hf.config.vocab_size
    long_ids = torch.randint(3, vocab, (70,), generator=g).tolist()  # 5 chunks of 16
    short_ids = torch.randint(3, vocab, (9,), generator=g).tolist()
    # max_tokens 0 scores the prompts alone: batched token-id prompts, as lm-eval sends them.
    body = {"prompt": [long_ids, short_ids], "echo": True, "logprobs": 2, "max_tokens": 0, "temperature": 0}
    r = _post(server, "completions", body)
    assert r["usage"]["completion_tokens"] == 0 and r["usage"]["prompt_tokens"] == 79
    for choice, ids in zip(r["choices"], [long_ids, short_ids], strict=True):
        assert choice["finish_reason"] == "length"
        assert choice["text"] == tokenizer.decode(ids)
        _check_echo(hf, tokenizer, ids, choice["logprobs"], 0, k=2)
        assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) == len(ids)
    # Again (a prefix-cache hit for anyone else): scored the same, nothing read from the cache.
    again = _post(server, "completions", body)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["choices"][0]["logprobs"] == r["choices"][0]["logprobs"]

    # A string prompt, with generated tokens after the prompt's: streamed equals non-streamed.
    text = "the quick brown fox jumps over the lazy dog and the cat sat on the mat"
    ids = tokenizer.encode(text)
    body = {
        "prompt": text,
        "echo": True,
        "logprobs": 1,
        "max_tokens": 3,
        "temperature": 0,
        "ignore_eos": True,
    }
    whole = _post(server, "completions", body)["choices"][0]
    assert whole["text"].startswith(text) and len(whole["logprobs"]["tokens"]) == len(ids) + 3
    _check_echo(hf, tokenizer, ids, whole["logprobs"], 3, k=1)
    streamed = _stream(server, body)
    assert "".join(c["text"] for c in streamed) == whole["text"]
    merged = {
        key: sum((c["logprobs"][key] for c in streamed if c["logprobs"]), []) for key in whole["logprobs"]
    }
    assert merged == whole["logprobs"]


def _stream(server, body: dict) -> list[dict]:
    import json

    import httpx

    chunks = []
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=120
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += json.loads(line[6:])["choices"]
    return chunks


def test_http_prompt_logprobs_field_completions_and_chat(served):
    server, hf, tokenizer = served
    text = "to be or not to be, that is the question"
    ids = tokenizer.encode(text)
    r = _post(
        server, "completions", {"prompt": text, "prompt_logprobs": 2, "max_tokens": 2, "temperature": 0}
    )
    ref = hf_prompt_logprobs(hf, ids)
    scored = r["choices"][0]["prompt_logprobs"]
    assert r["choices"][0]["logprobs"] is None and scored[0] is None and len(scored) == len(ids)
    for i in range(1, len(ids)):
        entry = scored[i]
        own = entry[str(ids[i])]
        assert own["logprob"] == pytest.approx(float(ref[i - 1, ids[i]]), abs=TOL)
        assert own["rank"] == int((ref[i - 1] >= ref[i - 1, ids[i]]).sum())
        assert own["decoded_token"] == tokenizer.decode([ids[i]])
        top = ref[i - 1].topk(2).indices.tolist()
        assert all(str(t) in entry for t in top) and len(entry) <= 3
    chat = _post(server, "chat/completions", {"messages": [{"role": "user", "content": text}],
                                               "prompt_logprobs": 0, "max_tokens": 2})  # fmt: skip
    assert chat["prompt_logprobs"][0] is None and all(len(e) == 1 for e in chat["prompt_logprobs"][1:])
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]


# ---- the default model: perplexity through the server equals quantize's own figure ----


@pytest.mark.slow
@pytest.mark.real_model
def test_served_perplexity_equals_quantize_figure():
    """The Hamlet windows `quantize` reports perplexity on (a few of them), scored by a served
    default model through echo + logprobs, give quantize's perplexity within 0.5%."""
    import copy
    import math

    import httpx

    from llmtool.core.models.aliases import DEFAULT_MODEL
    from llmtool.core.quant.calibration import evaluation_windows
    from llmtool.core.quant.config import QuantConfig
    from llmtool.core.quant.perplexity import perplexity
    from llmtool.core.runtime import resolve_dtype

    from .server_process import ServerProcess

    seq_len = QuantConfig("rtn").seq_len
    loaded = load_model(DEFAULT_MODEL, dtype=torch.float32, device="cpu", fast_tokenizer=False)  # as quantize
    windows = evaluation_windows(loaded.tokenizer, 3 * seq_len, seq_len)  # quantize's first 3 windows
    compute = resolve_dtype("auto", torch.device("cpu"))  # what quantize scores in
    expected = perplexity(copy.deepcopy(loaded.model).to(compute).prepare_for_inference(), windows)

    server = ServerProcess().wait_ready(timeout=300)  # the default model and dtype
    try:
        nll, count = 0.0, 0
        for window in windows:
            body = {"prompt": window, "echo": True, "logprobs": 0, "max_tokens": 0}
            r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=600)
            assert r.status_code == 200, r.text
            token_logprobs = r.json()["choices"][0]["logprobs"]["token_logprobs"]
            assert token_logprobs[0] is None and len(token_logprobs) == len(window)
            nll -= sum(token_logprobs[1:])
            count += len(window) - 1
    finally:
        assert server.stop() == 0, server.output()
    served = math.exp(nll / count)
    print(
        f"perplexity over {len(windows)} windows of {seq_len}: served {served:.4f}, quantize {expected:.4f}"
    )
    assert served == pytest.approx(expected, rel=0.005)
