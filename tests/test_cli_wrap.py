"""Piped output (no terminal, COLUMNS unset: 80 columns) wraps and never cuts: no option name,
model name or figure ends in "…" or "...", in help or in result tables, and every line fits
80 columns."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LLMTOOL = str(Path(sys.executable).with_name("llmtool"))
PLAN = ["plan-capacity", "--rps", "5", "--model", "llama-3.1-8b", "--compare-gpus", "h100-sxm,h200,a100-80gb",
        "--num-requests", "100"]  # fmt: skip


def piped(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERMINAL_WIDTH")}
    done = subprocess.run([LLMTOOL, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_uncut(text: str) -> None:
    assert "…" not in text, text
    # Click's usage line ends in "[ARGS]..." by convention; nothing else may end in dots.
    assert not re.search(r"\.\.\.", text.replace("[ARGS]...", "")), text
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, too_long


@pytest.mark.parametrize(
    "command", [[], ["models"], ["bench"], ["bench", "compare"], ["plan-capacity"], ["serve"], ["quantize"]]
)
def test_piped_help_wraps_and_keeps_every_name_whole(command):
    text = piped(*command, "--help")
    assert_uncut(text)
    flat = " ".join(text.split())
    if command == ["plan-capacity"]:
        for name in ("--gpu-memory-utilization", "--max-num-batched-tokens", "h100-sxm,h200,a100-80gb"):
            assert name in flat, name
    if command == ["serve"]:
        assert "--max-num-batched-tokens" in flat and "--num-speculative-tokens" in flat
    if command == []:  # each command's one-line summary, whole
        assert "plan-capacity Plan GPUs for a request rate under latency SLOs." in flat


def test_piped_tables_keep_names_and_figures_whole():
    text = piped(*PLAN, "--explain")
    assert_uncut(text)
    data = json.loads(piped(*PLAN, "--json", "-"))
    for name, plan in data["per_gpu"].items():
        assert plan["gpu"] in text, name
        assert f"{plan['cost_per_1k_output_tokens']:,.5f}" in text  # a price, not "0.0…"
        assert f"{plan['latency']['tpot_ms']['p95']:,.2f}" in text
    assert "replicas" in text and "tok/s/GPU" in text


def test_compare_with_long_result_names_keeps_them_whole(tmp_path):
    from llmtool.core.bench.metrics import summarize
    from llmtool.core.bench.records import RequestRecord

    records = [RequestRecord(i, 0.0, sent=0.0, first_token=0.05, end=0.2, chunk_times=[0.05, 0.2],
                             chunk_tokens=[1, 1], output_tokens=2) for i in range(4)]  # fmt: skip
    summary = summarize(records).to_dict()
    names = ["llama-3.1-8b-h100-baseline", "llama-3.1-8b-h100-candidate"]
    for name in names:
        (tmp_path / f"{name}.json").write_text(json.dumps({"summary": summary}))
    text = piped("bench", "compare", *(str(tmp_path / f"{n}.json") for n in names))
    assert_uncut(text)
    for name in names:
        assert name in text
