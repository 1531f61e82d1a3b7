"""Every registered family through the commands a user runs: `generate` gives transformers'
greedy tokens, `serve` answers an OpenAI request with them and `bench` drives that server,
on the tiny checkpoints of tests/architectures.py (with a tokenizer of their vocabulary)."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from .architectures import TINY, save_tiny, save_tokenizer
from .conftest import hf_greedy
from .server_process import ServerProcess

LLMTOOL = str(Path(sys.executable).with_name("llmtool"))
PROMPT = "the quick brown fox jumps over the lazy dog. a cat sat on"
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=sorted(TINY))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(path, request.param)
    save_tokenizer(path)
    ids = AutoTokenizer.from_pretrained(path)(PROMPT)["input_ids"]
    return request.param, path, hf_greedy(hf, ids, NEW_TOKENS)


def test_generate_gives_transformers_greedy_tokens(checkpoint):
    name, path, expected = checkpoint
    out = subprocess.run(
        [LLMTOOL, "generate", "--model", str(path), "--raw", PROMPT, "--max-tokens", str(NEW_TOKENS),
         "--dtype", "fp32", "--json", "-"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("{") :])
    got = result["token_ids"]  # generate stops at EOS (2); transformers' run went on
    assert got == expected[: len(got)] and (len(got) == NEW_TOKENS or got[-1] == 2), name


def test_serve_and_bench(checkpoint, tmp_path):
    name, path, expected = checkpoint
    server = ServerProcess("--model", str(path), "--dtype", "fp32", "--kv-cache-memory", "64MiB").wait_ready()
    try:
        body = {"model": str(path), "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
        reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).json()
        assert reply["usage"]["completion_tokens"] == NEW_TOKENS, reply
        report = tmp_path / "bench.json"
        bench = subprocess.run(
            [LLMTOOL, "bench", "--url", server.url, "--model", str(path), "--tokenizer", str(path),
             "-n", "6", "-c", "3", "--warmup", "0", "--input-len", "40", "--output-len", "8", "--json", str(report)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr
        assert '"num_completed": 6' in report.read_text(), name
    finally:
        server.stop()
