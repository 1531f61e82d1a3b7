"""`llmtool serve --speculative`: bad flags get one `error:` line and exit 2 before anything
loads; the speculation counters reach /metrics under vLLM's spec_decode_* names."""

import json

import pytest
from typer.testing import CliRunner

from llmtool.cli.main import app
from llmtool.core.engine.engine import EngineStats
from llmtool.core.server.metrics import ServerMetrics

from .conftest import TINY_LLAMA


def _serve(*args: str, monkeypatch):
    monkeypatch.delenv("LLMTOOL_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "0", *args], env={"COLUMNS": "200"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--speculative", "foo"), "--speculative must be 'ngram' or 'draft:MODEL', not 'foo'"),
        (("--speculative", "draft:"), "--speculative must be"),
        (("--speculative", "ngram", "--num-speculative-tokens", "0"), "must be at least 1, got 0"),
        (("--num-speculative-tokens", "3"), "--num-speculative-tokens needs --speculative"),
    ],
)
def test_bad_speculative_flags_exit_2(args, message, monkeypatch):
    assert message in _serve(*args, monkeypatch=monkeypatch)


def test_a_draft_with_another_vocabulary_exits_2(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))  # vocabulary of 256
    line = _serve("--speculative", f"draft:{tmp_path}", monkeypatch=monkeypatch)
    assert "vocabulary of 256 tokens" in line and "49152" in line


def test_speculation_counters_reach_metrics():
    assert "spec_decode" not in ServerMetrics("m").render()  # speculation off: no such series
    metrics = ServerMetrics("m", speculative=True)
    base = dict(num_running=0, num_waiting=0, kv_cache_usage=0.0, num_blocks=8, block_size=16)
    stats = EngineStats(
        **base,
        prefix_cache_queries=0,
        prefix_cache_hits=0,
        num_preemptions=0,
        spec_num_verify_steps=10,
        spec_num_draft_tokens=40,
        spec_num_accepted_tokens=30,
        spec_num_emitted_tokens=40,
    )
    metrics.update_from_stats(stats)
    text = metrics.render()
    assert 'llmtool:spec_decode_num_draft_tokens_total{model_name="m"} 40.0' in text
    assert 'llmtool:spec_decode_num_accepted_tokens_total{model_name="m"} 30.0' in text
    assert 'llmtool:spec_decode_draft_acceptance_rate{model_name="m"} 0.75' in text
    assert 'llmtool:spec_decode_mean_accepted_length{model_name="m"} 4.0' in text


def test_server_itl_splits_a_multi_token_step_like_bench():
    from llmtool.core.server.generation import inter_token_latencies

    # 2 tokens in the first chunk (no gap for the second), then 1, then 3 verified at once.
    assert inter_token_latencies([0.0, 0.0, 0.1, 0.4, 0.4, 0.4]) == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert inter_token_latencies([1.0]) == [] and inter_token_latencies([]) == []
