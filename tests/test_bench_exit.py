"""`llmtool bench` fails a run with failed requests: against a real server process that dies
mid-run (tests/dying_server.py), the exit status is 1 with the count in one line, the partial
JSON is still written, and --max-error-rate tolerates a stated share. No model: the prompts
are sized with a tiny tokenizer trained here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LLMTOOL = Path(sys.executable).with_name("llmtool")
SERVER = Path(__file__).with_name("dying_server.py")
NUM_REQUESTS, LIVES = 40, 14


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def make_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer (and a config.json, so the folder resolves as a model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"})
    )
    (path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    return path


def start_server(lives: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), str(lives)], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the dying server did not start"
    return proc, f"http://127.0.0.1:{port}"


def bench(url: str, tokenizer: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(LLMTOOL), "bench", "--url", url, "--tokenizer", str(tokenizer), "-c", "1"]
    command += ["-n", str(NUM_REQUESTS), "--warmup", "0", "--input-len", "8", "--output-len", "4", *args]
    env = {k: v for k, v in os.environ.items() if k != "LLMTOOL_DEBUG"} | {"COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def run_against_dying_server(tokenizer: Path, *args: str) -> subprocess.CompletedProcess:
    proc, url = start_server(LIVES)
    try:
        return bench(url, tokenizer, *args)
    finally:
        proc.kill()
        proc.wait()


def test_a_server_dying_mid_run_fails_the_run_and_still_writes_the_json(tokenizer_dir, tmp_path):
    out = tmp_path / "partial.json"
    result = run_against_dying_server(tokenizer_dir, "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    failed = NUM_REQUESTS - LIVES
    lines = [line for line in result.stderr.splitlines() if "requests failed" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{failed} of {NUM_REQUESTS} requests failed (")
    assert "error rate 65% > 0% allowed (--max-error-rate)" in lines[0]
    data = json.loads(out.read_text())
    summary = data["summary"]
    assert summary["num_completed"] == LIVES and summary["num_failed"] == failed
    # The one request in flight as it died is cut off; every later one is refused.
    assert set(summary["errors"]) <= {"connect", "disconnect"} and sum(summary["errors"].values()) == failed
    assert data["failed_requests"] == lines[0]
    assert data["config"]["max_error_rate"] == 0.0
    assert len(data["records"]) == NUM_REQUESTS


def test_max_error_rate_tolerates_a_stated_share(tokenizer_dir, tmp_path):
    # 26 of 40 fail (65%): within 0.7, over 0.6.
    assert run_against_dying_server(tokenizer_dir, "--max-error-rate", "0.7").returncode == 0
    over = run_against_dying_server(tokenizer_dir, "--max-error-rate", "0.6")
    assert over.returncode == 1 and "> 60% allowed" in over.stderr
    # An error_rate SLO states the tolerance too; its own line is not repeated beside the count.
    slo = run_against_dying_server(tokenizer_dir, "--slo", "error_rate=0.5")
    assert slo.returncode == 1 and "> 50% allowed" in slo.stderr and "SLO violated" not in slo.stderr


def test_a_run_without_failures_exits_0(tokenizer_dir):
    proc, url = start_server(10_000)
    try:
        result = bench(url, tokenizer_dir)
    finally:
        proc.kill()
        proc.wait()
    assert result.returncode == 0, result.stderr
    assert f"{NUM_REQUESTS}/{NUM_REQUESTS} completed" in result.stdout


def test_help_states_the_exit_rule_and_a_bad_flag_is_exit_2(tokenizer_dir):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    helped = subprocess.run([str(LLMTOOL), "bench", "--help"], capture_output=True, text=True, env=env)
    flat = " ".join(helped.stdout.split())
    assert (
        "Exit status: 0 when every request completed and every --slo held; 1 when a --slo is missed" in flat
    )
    assert "--max-error-rate" in flat and "2 on a bad flag" in flat
    bad = bench("http://127.0.0.1:9", tokenizer_dir, "--max-error-rate", "1.5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_json_format_vllm_writes_vllms_shape_one_line_per_sweep_step(tokenizer_dir, tmp_path):
    proc, url = start_server(10_000)
    try:
        one = bench(url, tokenizer_dir, "--json-format", "vllm", "--json", str(tmp_path / "v.json"))
        sweep = bench(url, tokenizer_dir, "--sweep", "concurrency=1,2", "-n", "4", "--json-format", "vllm",
                      "--json", str(tmp_path / "sweep.jsonl"))  # fmt: skip
        bad = bench(url, tokenizer_dir, "--json-format", "xml")
    finally:
        proc.kill()
        proc.wait()
    assert one.returncode == 0 and sweep.returncode == 0, one.stderr + sweep.stderr
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["completed"] == NUM_REQUESTS and data["model_id"] == "dying" and data["backend"] == "openai"
    assert len(data["ttfts"]) == NUM_REQUESTS and "p99_ttft_ms" in data and "summary" not in data
    steps = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    assert [s["max_concurrency"] for s in steps] == [1, 2] and all(s["completed"] == 4 for s in steps)
    assert bad.returncode == 2 and "--json-format must be llmtool or vllm" in bad.stderr
