"""logit_bias through HTTP, in completions and chat, streamed and not: +100 forces a token,
-100 forbids it; reported logprobs stay the model's raw ones (before the bias), as vLLM's."""

import json

import httpx
import pytest
import torch

from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.errors import UsageError

from .server_process import ServerProcess
from .tiny_served import hf_logprobs, save_tiny_served


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("served-bias")
    hf = save_tiny_served(path)
    server = ServerProcess("--model", str(path), "--dtype", "fp32", "--kv-cache-memory", "64MiB").wait_ready(
        300
    )
    yield server, hf, AutoTokenizer.from_pretrained(str(path))
    assert server.stop() == 0, server.output()


def _tokens(server, body: dict, stream: bool, chat: bool = False) -> tuple[list[int], list[float]]:
    """Generated token ids (via logprobs' token texts mapped back) and their logprobs."""
    path = "chat/completions" if chat else "completions"
    body = {**body, "stream": stream}
    if chat:
        body.update(logprobs=True, top_logprobs=0)
    else:
        body.update(logprobs=0)
    entries: list[tuple[str, float]] = []
    if not stream:
        r = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
    else:
        choices = []
        with httpx.stream("POST", f"{server.url}/v1/{path}", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices += json.loads(line[6:])["choices"]
    for c in choices:
        lp = c.get("logprobs")
        if not lp:
            continue
        if chat:
            entries += [(e["token"], e["logprob"]) for e in lp["content"]]
        else:
            entries += list(zip(lp["tokens"], lp["token_logprobs"], strict=True))
    return [text for text, _ in entries], [value for _, value in entries]


PROMPT = "the quick brown fox"
CHAT = [{"role": "user", "content": "the cat sat on"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chat", [False, True])
def test_plus_100_forces_and_minus_100_forbids(served, stream, chat):
    server, hf, tokenizer = served
    base = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    base.update({"messages": CHAT} if chat else {"prompt": PROMPT})
    plain, _ = _tokens(server, base, stream, chat)
    assert len(plain) == 6
    # Force a token the model would not pick; every generated token is that one.
    forced_id = next(i for i in range(3, hf.config.vocab_size) if tokenizer.decode([i]) not in plain)
    forced, forced_lps = _tokens(server, {**base, "logit_bias": {str(forced_id): 100}}, stream, chat)
    assert forced == [tokenizer.decode([forced_id])] * 6
    assert all(lp < -1e-3 for lp in forced_lps)  # the raw logprob, not the biased ~0
    # Forbid every token greedy decoding chose: none of them comes back.
    banned = {i for i in range(hf.config.vocab_size) if tokenizer.decode([i]) in plain}
    got, _ = _tokens(server, {**base, "logit_bias": {str(i): -100 for i in banned}}, stream, chat)
    assert len(got) == 6 and not set(got) & set(plain)


def test_raw_logprobs_of_a_biased_token_match_transformers(served):
    server, hf, tokenizer = served
    ids = tokenizer.encode(PROMPT)
    target = 5
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={
            "prompt": PROMPT,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": 1,
            "logit_bias": {str(target): 100},
        },
        timeout=120,
    ).json()
    expected = float(hf_logprobs(hf, ids)[-1, target])
    assert r["choices"][0]["logprobs"]["token_logprobs"][0] == pytest.approx(expected, abs=1e-4)


def test_bad_logit_bias_is_a_400(served):
    server, hf, _ = served
    for bias in ({str(hf.config.vocab_size): 1}, {"x": 1}, {"3": -101}):
        r = httpx.post(
            f"{server.url}/v1/completions", json={"prompt": PROMPT, "logit_bias": bias}, timeout=60
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text


def test_sampling_params_check_the_bias_range():
    assert SamplingParams(logit_bias=((3, -100.0), (4, 100.0))).logit_bias[1] == (4, 100.0)
    with pytest.raises(UsageError):
        SamplingParams(logit_bias=((3, 100.5),))
    with pytest.raises(UsageError):
        SamplingParams(logit_bias=((3, float("nan")),))


def test_sampled_rows_take_the_bias():
    # A temperature-1 draw with +100 on one token picks it every time (its probability ~1).
    from llmtool.core.engine.sampler import Sampler
    from llmtool.core.engine.sequence import Sequence

    logits = torch.randn(3, 50)
    seqs = [Sequence(f"r{i}", [1, 2], SamplingParams(seed=i, logit_bias=((7, 100.0),))) for i in range(3)]
    out = Sampler(50).sample(logits, seqs)
    assert out.token_ids == [7, 7, 7]
