"""The real server process on the default model, driven by the official openai client:
chat and completions (streaming and not), n, stop, seed, logprobs, usage, 64 concurrent
streams, /metrics, client disconnects and the 4xx bodies."""

import asyncio
import time

import httpx
import openai
import pytest

from tests.machine import slowdown
from tests.server_process import ServerProcess, metric

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

MODEL = "smollm2-135m"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server():
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    # The first start on a machine rebuilds the tokenizer from GGUF metadata once (`make install`
    # does it); the cold start measured here is every start after that, with default flags.
    load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]))
    proc = ServerProcess().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _metrics(server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def test_health_within_five_seconds_of_process_start(server):
    # 5 s on a quiet machine (measured 2.7-3.8 s), scaled by how much slower this one runs now.
    factor = slowdown()
    starts = [server.ready_after]
    if starts[0] > 5.0 * factor:
        # One more start: a neighbour can stall one start for a moment. Both slow is a failure.
        extra = ServerProcess().wait_ready()
        starts.append(extra.ready_after)
        factor = max(factor, slowdown())
        assert extra.stop() == 0
    assert min(starts) <= 5.0 * factor, (
        f"ready after {', '.join(f'{s:.1f}' for s in starts)} s; bound 5 s x slowdown {factor:.2f}"
    )


def test_models_and_version(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(f"{server.url}/version").json()["version"]


def test_chat_non_streaming_counts_its_tokens(client):
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=24, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    tokens = choice.logprobs.content
    assert r.usage.completion_tokens == len(tokens) and 1 <= len(tokens) <= 24
    assert all(len(t.top_logprobs) == 3 for t in tokens)
    # Greedy: the chosen token is the most likely one.
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-4) for t in tokens)
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + len(tokens)


def test_chat_streaming_matches_non_streaming(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_n2_stop_and_logprobs(client):
    r = client.completions.create(
        model=MODEL,
        prompt="The days of the week are Monday, Tuesday,",
        max_tokens=40,
        n=2,
        temperature=0.8,
        seed=7,
        stop=[" Friday"],
        logprobs=2,
    )
    assert [c.index for c in r.choices] == [0, 1]
    total = 0
    for c in r.choices:
        assert " Friday" not in c.text
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs)
        total += len(c.logprobs.tokens)
        if c.finish_reason == "stop":  # the stop string ended it; its token was generated and counted
            assert "Friday" in "".join(c.logprobs.tokens[-3:]) or c.logprobs.tokens
    assert r.usage.completion_tokens == total


def test_seed_reproduces_and_differs(client):
    def sample(seed):
        r = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=seed
        )
        return r.choices[0].text

    assert sample(123) == sample(123)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_echo_prepends_the_prompt(client):
    r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text.startswith("Hello there") and len(r.choices[0].text) > len("Hello there")


def test_sixty_four_concurrent_streams(server):
    before = _metrics(server)
    done_before = metric(before, "llmtool:e2e_request_latency_seconds_count", model_name=MODEL)
    aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

    async def one(i):
        stream = await aclient.completions.create(
            model=MODEL,
            prompt=f"Request {i}: the story of a lighthouse keeper",
            max_tokens=16 + i % 8,
            temperature=0.7,
            seed=i,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        tokens, usage = 0, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].logprobs:
                tokens += len(chunk.choices[0].logprobs.tokens)
            if chunk.usage:
                usage = chunk.usage
        return i, tokens, usage

    async def main():
        return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(main())
    for i, tokens, usage in results:
        assert tokens == 16 + i % 8 == usage.completion_tokens
    after = _metrics(server)
    assert metric(after, "llmtool:e2e_request_latency_seconds_count", model_name=MODEL) - done_before == 64
    assert metric(after, "llmtool:num_requests_running", model_name=MODEL) == 0
    assert metric(after, "llmtool:num_requests_waiting", model_name=MODEL) == 0
    assert metric(after, "llmtool:kv_cache_usage_perc", model_name=MODEL) == 0  # cached blocks are free
    assert metric(after, "llmtool:generation_tokens_total", model_name=MODEL) >= sum(r[1] for r in results)
    assert metric(after, "llmtool:http_requests_total", status="200") >= 64


def test_disconnect_mid_stream_frees_blocks_within_a_second(server):
    body = {"prompt": "A very long story:", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.url}/v1/completions", json=body) as response:
            lines = response.iter_lines()
            got = [line for line, _ in zip(lines, range(12), strict=False) if line.startswith("data:")]
            assert len(got) >= 5
            during = _metrics(server)
            assert metric(during, "llmtool:num_requests_running", model_name=MODEL) == 1
            assert metric(during, "llmtool:kv_cache_usage_perc", model_name=MODEL) > 0
        closed = time.monotonic()  # leaving the block closes the connection mid-stream
    while True:
        now = _metrics(server)
        idle = metric(now, "llmtool:num_requests_running", model_name=MODEL) == 0
        if idle and metric(now, "llmtool:kv_cache_usage_perc", model_name=MODEL) == 0:
            break
        assert time.monotonic() - closed < 1.0, "blocks still held 1 s after the client left"
        time.sleep(0.02)
    assert metric(now, "llmtool:request_success_total", model_name=MODEL, finished_reason="abort") >= 1


def test_disconnect_of_a_non_streaming_request_aborts_it(server):
    body = {"prompt": "Tell me everything:", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.8)
    left = time.monotonic()
    while metric(_metrics(server), "llmtool:num_requests_running", model_name=MODEL) != 0:
        assert time.monotonic() - left < 1.0, "the request kept running after its client left"
        time.sleep(0.02)


BAD_REQUESTS = [
    # (endpoint, body or raw bytes, status, param)
    ("completions", {"prompt": "x " * 9000, "max_tokens": 4}, 400, "prompt"),
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "max_tokens": 10**6}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "stop": 5}, 400, "stop"),
    ("completions", b'{"prompt": "hi",', 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", {"max_tokens": 4}, 400, "prompt"),
    ("completions", {"prompt": [49152]}, 400, "prompt"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("chat/completions", {"messages": CHAT, "max_completion_tokens": -1}, 400, "max_completion_tokens"),
    ("chat/completions", {"messages": CHAT, "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_error_bodies(server, endpoint, body, status, param):
    url = f"{server.url}/v1/{endpoint}"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    else:
        r = httpx.post(url, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_openai_client_raises_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)


def test_unknown_route_is_an_openai_404(server):
    r = httpx.get(f"{server.url}/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_metrics_are_prometheus_text_with_vllm_names(server):
    r = httpx.get(f"{server.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "llmtool:time_to_first_token_seconds_bucket",
        "llmtool:inter_token_latency_seconds_bucket",
        "llmtool:e2e_request_latency_seconds_sum",
        "llmtool:prompt_tokens_total",
        "llmtool:prefix_cache_queries_total",
        "llmtool:prefix_cache_hits_total",
        "llmtool:num_preemptions_total",
    ):
        assert name in r.text
