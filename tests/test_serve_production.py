"""Production behaviour of the real server process, on a tiny random model that carries the
default model's tokenizer (fast to load and to run): API keys, a request that fails alone
(NaN logits) while the others go on, 429 on a full queue, per-request timeouts, SIGTERM."""

import json
import threading
import time

import httpx
import pytest
import torch

from tests.server_process import ServerProcess, metric

from .conftest import _save_tiny

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

KEY = "sk-test-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
POISON = 4242  # embedding row set to NaN
ORIGIN = "https://app.example.com"
TIMEOUT = 6  # seconds: long enough for every other test's requests on a busy machine


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's vocabulary, tokenizer and chat template."""
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    path = tmp_path_factory.mktemp("tiny-served")
    hf = _save_tiny(path, "llama", vocab_size=49152, max_position_embeddings=8192, eos_token_id=2)
    with torch.no_grad():
        hf.model.embed_tokens.weight[POISON] = float("nan")
    hf.save_pretrained(path, safe_serialization=True)
    load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]), fast=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_dir):
    args = ["--model", str(tiny_dir), "--served-model-name", "tiny", "--api-key", KEY]
    args += ["--max-num-seqs", "2", "--max-queue", "1", "--request-timeout", str(TIMEOUT), "--dtype", "fp32"]
    args += ["--cors-origin", ORIGIN]
    proc = ServerProcess(*args).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.output()


def _post(server, body, endpoint="completions", headers=AUTH, timeout=30.0):
    return httpx.post(
        f"{server.url}/v1/{endpoint}", json={"model": "tiny", **body}, headers=headers, timeout=timeout
    )


def _greedy(server, prompt, n=24):
    r = _post(
        server, {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "logprobs": 0}
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["tokens"]


def test_api_key_is_required_on_v1_only(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = _post(server, {"prompt": "hi", "max_tokens": 2}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_cors_preflight_and_responses_name_the_allowed_origin(server):
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200  # a browser's preflight carries no API key
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(f"{server.url}/v1/models", headers={**AUTH, "Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{server.url}/v1/models", headers={**AUTH, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_nan_request_fails_alone_and_the_server_keeps_serving(server):
    clean = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    reference = _greedy(server, clean, 120)
    results = {}

    def run_clean():
        results["clean"] = _greedy(server, clean, 120)

    worker = threading.Thread(target=run_clean)
    worker.start()
    time.sleep(0.05)  # the clean request is decoding when the poisoned one arrives
    bad = _post(server, {"prompt": [11, 12, POISON, 14], "max_tokens": 8})
    worker.join()
    assert bad.status_code == 500
    assert "non-finite logits" in bad.json()["error"]["message"]
    assert results["clean"] == reference  # the neighbour in the batch was untouched
    # Streaming: the failure is one error event, then [DONE].
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        headers=AUTH,
        json={"prompt": [POISON, 5], "max_tokens": 8, "stream": True},
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "non-finite" in json.loads(events[-2])["error"]["message"]
    assert _greedy(server, clean, 120) == reference  # no poisoned K/V reached the cache
    assert httpx.get(f"{server.url}/health").status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "llmtool:request_success_total", model_name="tiny", finished_reason="error") == 2


def _open_stream(client, server):
    body = {"model": "tiny", "prompt": "go", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    request = client.build_request("POST", f"{server.url}/v1/completions", json=body, headers=AUTH)
    response = client.send(request, stream=True)
    assert response.status_code == 200
    return response


def test_a_full_queue_answers_429_with_retry_after(server):
    # max-num-seqs 2 + max-queue 1: three requests may be unfinished; the fourth is refused.
    with httpx.Client(timeout=10) as client:
        streams = [_open_stream(client, server) for _ in range(3)]
        try:
            r = _post(server, {"prompt": "one more", "max_tokens": 4})
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        finally:
            for s in streams:
                s.close()
    deadline = time.monotonic() + 2
    while True:  # the closed streams were aborted: room again
        r = _post(server, {"prompt": "after", "max_tokens": 4})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text


def test_request_timeout_ends_the_request_with_408(server):
    start = time.monotonic()
    r = _post(server, {"prompt": "forever", "max_tokens": 8000, "ignore_eos": True})
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
    assert TIMEOUT - 0.1 < time.monotonic() - start < TIMEOUT + 4
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        headers=AUTH,
        json={"model": "tiny", "prompt": "forever", "max_tokens": 8000, "ignore_eos": True, "stream": True},
        timeout=30,
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "request_timeout"
    assert len(events) > 10  # it streamed tokens before the deadline
    time.sleep(0.2)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "llmtool:num_requests_running", model_name="tiny") == 0


def test_chat_template_comes_from_the_model(server):
    r = _post(
        server,
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 3,
        },
        endpoint="chat/completions",
    )
    assert r.status_code == 200
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server_tokenizer_dir(server))
    ids = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # a BatchEncoding in transformers 5
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


def server_tokenizer_dir(server):
    return server.proc.args[server.proc.args.index("--model") + 1]


def test_sigterm_finishes_in_flight_requests_then_exits_0(tiny_dir):
    proc = ServerProcess("--model", str(tiny_dir), "--dtype", "fp32", "--shutdown-grace", "20").wait_ready()
    body = {"prompt": "count", "max_tokens": 300, "ignore_eos": True, "stream": True, "temperature": 0}
    try:
        with httpx.stream("POST", f"{proc.url}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            first = [next(lines) for _ in range(4)]
            assert any(line.startswith("data: ") for line in first)
            proc.terminate()
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no new connections while draining
                httpx.get(f"{proc.url}/health", timeout=2)
            rest = list(lines)
        events = [line[6:] for line in first + rest if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.proc.wait(30) == 0
    finally:
        proc.stop()
    assert "SIGTERM" in proc.output()
