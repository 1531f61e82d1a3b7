"""Result files of other tools: `llmtool bench --json-format vllm` writes vLLM's flat
`vllm bench serve --save-result --save-detailed` shape, and `llmtool bench compare` reads
vLLM's and GuideLLM's result files beside ours, telling them apart by their keys.

The vLLM and GuideLLM files here are built the way those tools build them (key names,
units, which keys a default run has, per vllm/benchmarks/serve.py and GuideLLM 0.8.1's
GenerativeBenchmarksReport); a real GuideLLM file is in tests/data, and a GuideLLM run of
its own in the `peer` test at the end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmtool.core.bench.load import LoadConfig
from llmtool.core.bench.metrics import summarize
from llmtool.core.bench.records import RequestRecord
from llmtool.core.bench.result_file import read_result
from llmtool.core.bench.runner import BenchConfig, BenchResult
from llmtool.core.bench.vllm_format import from_vllm, to_vllm
from llmtool.core.errors import UsageError

LLMTOOL = str(Path(sys.executable).with_name("llmtool"))
GUIDELLM = [sys.executable, "-P", "-m", "guidellm"]  # the `guidellm` console script, from any venv layout


# ---- our run, in vLLM's shape ----


def record(i: int, ttft: float, gap: float, n: int, k: int = 1, error: str | None = None) -> RequestRecord:
    """A request scheduled at i * 0.1 s, sent 1 ms later, streaming n tokens k per chunk."""
    scheduled = 0.1 * i
    if error:
        return RequestRecord(
            i, scheduled, prompt_len=32, sent=scheduled + 0.001, error=error, error_detail="refused"
        )
    chunks = [scheduled + ttft + j * gap * k for j in range(n // k)]
    return RequestRecord(
        i, scheduled, prompt_len=32, sent=scheduled + 0.001, first_token=chunks[0], end=chunks[-1],
        chunk_times=chunks, chunk_tokens=[k] * len(chunks), prompt_tokens=32, output_tokens=n,
        output_text=" tok" * n,
    )  # fmt: skip


def bench_result(records: list[RequestRecord], percentiles=(50, 90, 99)) -> BenchResult:
    config = BenchConfig(
        url="http://127.0.0.1:8000",
        load=LoadConfig(num_requests=len(records), concurrency=4),
        percentiles=percentiles,
    )
    target = {"kind": "http", "url": config.url, "endpoint": "completions", "model": "m", "tokenizer": "m"}
    summary = summarize(records, percentiles=percentiles)
    return BenchResult(config, target, records, summary, violations=[], aborted=False)


@pytest.fixture
def result() -> BenchResult:
    rng = np.random.default_rng(0)
    records = [
        record(i, ttft=0.05 + 0.02 * rng.random(), gap=0.01 + 0.005 * rng.random(), n=16) for i in range(18)
    ]
    records.append(record(18, ttft=0.05, gap=0.01, n=16, k=4))  # a speculative 4-token-chunk stream
    records.append(record(19, 0, 0, 0, error="connect"))
    return bench_result(records)


def test_vllm_export_has_vllms_keys_and_units(result):
    out = to_vllm(result)
    json.dumps(out, allow_nan=False)  # plain JSON, no NaN or Infinity
    setup = ("date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
             "burstiness", "max_concurrency")  # fmt: skip
    totals = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
              "request_goodput", "output_throughput", "total_token_throughput")  # fmt: skip
    lists = (
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "latencies",
        "start_times",
        "generated_texts",
        "errors",
    )
    stats = [
        f"{s}_{m}_ms"
        for m in ("ttft", "tpot", "itl", "e2el")
        for s in ("mean", "median", "std", "p50", "p90", "p99")
    ]
    for key in (*setup, *totals, *lists, *stats):
        assert key in out, key
    assert out["backend"] == "openai" and out["request_rate"] == "inf" and out["max_concurrency"] == 4
    assert out["completed"] == 19 and out["failed"] == 1 and out["num_prompts"] == 20
    assert all(len(out[k]) == 20 for k in lists)
    ok = [r for r in result.records if r.ok]
    # Per-request lists in seconds, request order; a failed request: 0, no gaps, its error text.
    assert out["ttfts"][:19] == [r.ttft for r in ok] and out["latencies"][:19] == [r.e2e for r in ok]
    assert out["ttfts"][19] == 0.0 and out["itls"][19] == [] and out["output_lens"][19] == 0
    assert out["errors"][:19] == [""] * 19 and out["errors"][19] == "connect: refused"
    assert out["itls"][18] == pytest.approx([0.01] * 12)  # 3 later 4-token chunks: 4 gaps of gap/4 each
    assert out["generated_texts"][0] == " tok" * 16 and out["output_lens"][0] == 16
    # Aggregates in ms, numpy's linear percentiles, as vLLM computes them; median is p50.
    ttft_ms = np.array([r.ttft for r in ok]) * 1000
    assert out["mean_ttft_ms"] == pytest.approx(ttft_ms.mean())
    assert out["std_ttft_ms"] == pytest.approx(ttft_ms.std())
    assert out["p99_ttft_ms"] == pytest.approx(np.percentile(ttft_ms, 99))
    assert out["median_e2el_ms"] == pytest.approx(out["p50_e2el_ms"])
    assert out["total_output_tokens"] == 19 * 16 and out["total_input_tokens"] == 19 * 32


def test_vllm_percentile_keys_are_spelt_like_vllms():
    out = to_vllm(bench_result([record(i, 0.05, 0.01, 8) for i in range(5)], percentiles=(50, 99, 99.9)))
    assert {"p99_ttft_ms", "p99.9_ttft_ms", "p50_itl_ms"} <= set(out)  # str(int(p)) if whole, else str(p)
    assert "p99.0_ttft_ms" not in out


def test_vllm_export_round_trips_through_compare(result, tmp_path):
    """Our run exported in vLLM's shape reads back as the same figures `bench compare` shows."""
    ours = result.summary.to_dict()
    back = from_vllm(to_vllm(result))
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "error_rate"):
        assert back[key] == pytest.approx(ours[key]), key
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert back[metric]["mean"] == pytest.approx(ours[metric]["mean"])
        assert back[metric]["std"] == pytest.approx(ours[metric]["std"])
        for p in ("p50", "p90", "p99"):
            assert back[metric]["percentiles"][p] == pytest.approx(ours[metric]["percentiles"][p]), (
                metric,
                p,
            )
    (tmp_path / "ours.json").write_text(json.dumps(result.to_dict()))
    (tmp_path / "theirs.json").write_text(json.dumps(to_vllm(result)))
    assert read_result(tmp_path / "theirs.json").tool == "vllm"
    done = compare(tmp_path / "ours.json", tmp_path / "theirs.json")
    assert done.returncode == 0, done.stderr
    assert "theirs (vllm)" in done.stdout
    ratios = re.findall(r"\d+\.\d+x", done.stdout)
    assert len(ratios) == 10 and set(ratios) == {"1.00x"}, done.stdout  # all but goodput: no SLO, none stated


# ---- vLLM's and GuideLLM's own files ----

# `vllm bench serve --save-result` with its defaults (--percentile-metrics ttft,tpot,itl,
# --metric-percentiles 99, no --save-detailed): no per-request lists, no e2el.
VLLM_DEFAULT = {
    "date": "20260301-101500", "endpoint_type": "openai", "backend": "openai", "label": None,
    "model_id": "meta-llama/Llama-3.1-8B-Instruct", "tokenizer_id": "meta-llama/Llama-3.1-8B-Instruct",
    "num_prompts": 200, "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 16,
    "duration": 41.7, "completed": 198, "failed": 2, "total_input_tokens": 202752, "total_output_tokens": 25344,
    "request_throughput": 4.748, "request_goodput": None, "output_throughput": 607.8, "total_token_throughput": 5469.9,
    "latencies": [3.1] * 200, "queue_times": [0.0] * 200, "max_output_tokens_per_s": 712.0,
    "max_concurrent_requests": 16, "rtfx": 0.0,
    "mean_ttft_ms": 212.4, "median_ttft_ms": 198.2, "std_ttft_ms": 61.0, "p99_ttft_ms": 402.7,
    "mean_tpot_ms": 22.6, "median_tpot_ms": 22.1, "std_tpot_ms": 2.4, "p99_tpot_ms": 29.8,
    "mean_itl_ms": 22.5, "median_itl_ms": 21.0, "std_itl_ms": 9.7, "p99_itl_ms": 61.2,
}  # fmt: skip


def guidellm_dist(values, weights=None) -> dict:
    """A GuideLLM DistributionSummary of values (nearest-rank percentiles, as its pdf gives)."""
    a = np.sort(np.asarray(values, dtype=float))
    if not len(a):
        zeros = dict.fromkeys(
            ("p001", "p01", "p05", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p999"), 0.0
        )
        return {"mean": 0.0, "median": 0.0, "mode": 0.0, "variance": 0.0, "std_dev": 0.0, "min": 0.0, "max": 0.0,
                "count": 0, "total_sum": 0.0, "percentiles": zeros, "pdf": None, "mean_ci": None,
                "percentile_cis": None}  # fmt: skip
    rank = lambda q: float(a[min(len(a) - 1, int(np.ceil(q * len(a))) - 1)])  # noqa: E731
    pct = {"p001": 0.001, "p01": 0.01, "p05": 0.05, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75,
           "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}  # fmt: skip
    return {
        "mean": float(np.average(a, weights=weights)), "median": rank(0.5), "mode": float(a[0]),
        "variance": float(a.var()), "std_dev": float(a.std()), "min": float(a[0]), "max": float(a[-1]),
        "count": len(a), "total_sum": float(a.sum()), "percentiles": {k: rank(q) for k, q in pct.items()},
        "pdf": None, "mean_ci": None, "percentile_cis": None,
    }  # fmt: skip


def status(successful, errored=(), weights=None) -> dict:
    return {
        "successful": guidellm_dist(successful, weights),
        "errored": guidellm_dist(errored),
        "incomplete": guidellm_dist([]),
        "total": guidellm_dist([*successful, *errored]),
    }


def guidellm_report(requests: list[tuple[float, float, float, int]], errored: int = 0) -> dict:
    """GuideLLM 0.8.1's `--output kind=json` for requests (start, first token, last token,
    output tokens) in seconds: each record's computed fields by GuideLLM's formulas, and the
    benchmark's metrics over them."""
    records = []
    for i, (start, first, last, n) in enumerate(requests):
        timings = {"request_start": start, "first_token_iteration": first, "last_token_iteration": last,
                   "request_end": last + 0.0005, "resolve_end": last + 0.001, "request_iterations": n}  # fmt: skip
        records.append({
            "request_id": f"req-{i}", "response_id": f"cmpl-{i}", "request_args": None, "output": " tok" * n,
            "info": {"status": "completed", "timings": timings}, "input_metrics": {"text_tokens": 128},
            "output_metrics": {"text_tokens": n}, "request_start_time": start, "request_end_time": last + 0.0005,
            "request_latency": last + 0.0005 - start, "prompt_tokens": 128, "output_tokens": n,
            "total_tokens": 128 + n, "time_to_first_token_ms": 1000 * (first - start),
            "time_per_output_token_ms": 1000 * (last - start) / n,
            "inter_token_latency_ms": 1000 * (last - first) / (n - 1) if n > 1 else None,
            "tokens_per_second": (128 + n) / (last + 0.0005 - start), "output_tokens_per_second": n / (last - start),
        })  # fmt: skip
    window = max(r[2] for r in requests) - min(r[0] for r in requests)
    itl = [r["inter_token_latency_ms"] for r in records if r["inter_token_latency_ms"] is not None]
    metrics = {
        "request_totals": {"successful": len(records), "errored": errored, "incomplete": 0,
                           "total": len(records) + errored},
        "requests_per_second": status([len(records) / window]),
        "request_concurrency": status([2.0]),
        "request_latency": status([r["request_latency"] for r in records]),
        "prompt_token_count": status([128] * len(records)),
        "output_token_count": status([r["output_tokens"] for r in records]),
        "time_to_first_token_ms": status([r["time_to_first_token_ms"] for r in records]),
        "time_per_output_token_ms": status([r["time_per_output_token_ms"] for r in records]),
        "inter_token_latency_ms": status(itl, weights=[r["output_tokens"] - 1 for r in records if r["output_tokens"] > 1]),
        "output_tokens_per_second": status([sum(r["output_tokens"] for r in records) / window]),
        "tokens_per_second": status([sum(r["total_tokens"] for r in records) / window]),
    }  # fmt: skip
    benchmark = {
        "type_": "generative_benchmark", "config": {"id_": "b0", "run_id": "r0", "run_index": 0,
        "strategy": {"type_": "concurrent", "streams": 2}, "constraints": {"max_requests": {"count": len(records)}}},
        "scheduler_state": {}, "scheduler_metrics": {}, "metrics": metrics,
        "requests": {"successful": records, "errored": [], "incomplete": [], "total": None}, "warnings": [],
    }  # fmt: skip
    return {"metadata": {"version": 2, "guidellm_version": "0.8.1"}, "config": {}, "benchmarks": [benchmark],
            "conclusions": []}  # fmt: skip


def test_compare_reads_vllms_save_result_file(result, tmp_path):
    (tmp_path / "ours.json").write_text(json.dumps(result.to_dict()))
    (tmp_path / "vllm.json").write_text(json.dumps(VLLM_DEFAULT))
    summary = read_result(tmp_path / "vllm.json").summary
    assert summary["ttft_ms"]["percentiles"] == {"p99": 402.7, "p50": 198.2}  # median is p50
    assert summary["error_rate"] == pytest.approx(2 / 200) and summary["e2e_ms"]["mean"] is None
    done = compare(tmp_path / "ours.json", tmp_path / "vllm.json")
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()}
    assert "402.70" in done.stdout and "607.80" in done.stdout and "vllm (vllm)" in done.stdout
    assert any("E2E p50" in label and "-" in row for label, row in rows.items())  # vLLM did not state it
    # vLLM's --append-result file (one run per line) is refused as several runs, not as unknown.
    (tmp_path / "appended.json").write_text(json.dumps(VLLM_DEFAULT) + "\n" + json.dumps(VLLM_DEFAULT) + "\n")
    assert "holds 2 runs" in one_error_line(compare(tmp_path / "ours.json", tmp_path / "appended.json"))


def test_compare_reads_a_guidellm_file_by_our_definitions(tmp_path):
    rng = np.random.default_rng(1)
    requests = []
    for i in range(12):
        start = 0.2 * i
        first = start + 0.04 + 0.02 * rng.random()
        n = 32
        requests.append((start, first, first + (n - 1) * (0.008 + 0.004 * rng.random()), n))
    report = guidellm_report(requests, errored=1)
    (tmp_path / "guidellm.json").write_text(json.dumps(report))
    summary = read_result(tmp_path / "guidellm.json").summary
    ttft = [1000 * (f - s) for s, f, _, _ in requests]
    tpot = [1000 * (last - f) / (n - 1) for _, f, last, n in requests]
    # From the per-request records, our way: linear percentiles; GuideLLM's ITL per request is our TPOT.
    assert summary["ttft_ms"]["percentiles"]["p50"] == pytest.approx(np.percentile(ttft, 50))
    assert summary["tpot_ms"]["percentiles"]["p99"] == pytest.approx(np.percentile(tpot, 99))
    assert summary["e2e_ms"]["mean"] == pytest.approx(
        np.mean([1000 * (last + 0.0005 - s) for s, _, last, _ in requests])
    )
    window = requests[-1][2] - requests[0][0]
    assert summary["request_throughput"] == pytest.approx(12 / window)
    assert summary["output_throughput"] == pytest.approx(12 * 32 / window)
    assert summary["error_rate"] == pytest.approx(1 / 13)
    assert summary["itl_ms"]["mean"] == pytest.approx(
        np.mean(tpot)
    )  # equal gaps per request: pooled = weighted
    # Without records (GuideLLM can sample them away) the aggregates stand in.
    report["benchmarks"][0]["requests"]["successful"] = []
    (tmp_path / "sampled.json").write_text(json.dumps(report))
    sampled = read_result(tmp_path / "sampled.json").summary
    assert sampled["ttft_ms"]["percentiles"]["p50"] == report["benchmarks"][0]["metrics"]["time_to_first_token_ms"][
        "successful"]["percentiles"]["p50"]  # fmt: skip
    assert sampled["tpot_ms"]["mean"] is None
    done = compare(tmp_path / "guidellm.json", tmp_path / "sampled.json")
    assert done.returncode == 0 and "guidellm (guidellm)" in done.stdout, done.stderr


def test_compare_reads_a_real_guidellm_file(result, tmp_path):
    """tests/data/guidellm-0.8.1-mock-server.json: GuideLLM 0.8.1's own `guidellm run --output
    kind=json` of 8 requests at concurrency 2 against `guidellm mock-server --ttft-ms 40
    --itl-ms 8` (its per-modality text/image/video/audio/tool_call metrics cut for size)."""
    path = Path(__file__).parent / "data" / "guidellm-0.8.1-mock-server.json"
    raw = json.loads(path.read_text())["benchmarks"][0]
    records = raw["requests"]["successful"]
    theirs = read_result(path)
    assert theirs.tool == "guidellm"
    summary = theirs.summary
    assert summary["num_completed"] == 8 and summary["error_rate"] == 0.0
    assert summary["request_throughput"] == raw["metrics"]["requests_per_second"]["successful"]["mean"]
    assert summary["output_throughput"] == raw["metrics"]["output_tokens_per_second"]["successful"]["mean"]
    ttft = [r["time_to_first_token_ms"] for r in records]
    tpot = [r["inter_token_latency_ms"] for r in records]
    assert summary["ttft_ms"]["percentiles"]["p50"] == pytest.approx(np.percentile(ttft, 50))
    assert summary["tpot_ms"]["percentiles"]["p99"] == pytest.approx(np.percentile(tpot, 99))
    assert 8 <= summary["tpot_ms"]["percentiles"]["p50"] <= 12  # the mock's 8 ms ITL, as GuideLLM saw it
    (tmp_path / "ours.json").write_text(json.dumps(result.to_dict()))
    done = compare(tmp_path / "ours.json", path)
    assert done.returncode == 0 and "guidellm-0.8.1-mock-server (guidellm)" in done.stdout, done.stderr


def test_an_unknown_or_multi_run_file_is_one_clear_line(tmp_path, result):
    (tmp_path / "ours.json").write_text(json.dumps(result.to_dict()))
    cases = {
        "other.json": (json.dumps({"results": [1, 2]}), "is not a result of llmtool bench --json, vllm bench serve --save-result or guidellm run"),
        "text.json": ("not json at all", "is not JSON"),
        "sweep.json": (json.dumps({"sweep": "concurrency=1,2", "steps": [{}, {}]}), "is a sweep of 2 runs"),
        "two.json": (json.dumps(guidellm_report([(0, 0.1, 0.5, 8)]) | {"benchmarks": [{"metrics": {}}] * 2}),
                     "holds 2 GuideLLM benchmarks"),
    }  # fmt: skip
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        assert needle in one_error_line(compare(tmp_path / "ours.json", tmp_path / name)), name
    assert "cannot read" in one_error_line(compare(tmp_path / "ours.json", tmp_path / "missing.json"))
    with pytest.raises(UsageError):
        read_result(tmp_path / "other.json")


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLMTOOL_DEBUG"} | {"COLUMNS": "200"}
    return subprocess.run(
        [LLMTOOL, "bench", "compare", str(a), str(b)], capture_output=True, text=True, env=env
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.peer
def test_compare_reads_a_real_guidellm_run_beside_ours(tmp_path):
    """GuideLLM's own file, from `guidellm run` against its own mock server (fixed TTFT and ITL),
    compared with `llmtool bench` against the same server: both read the mock's timings."""
    from tests.server_process import free_port
    from tests.test_bench_exit import make_tokenizer

    tokenizer = make_tokenizer(tmp_path)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(
        [*GUIDELLM, "mock-server", "--port", str(port), "--model", "mock", "--ttft-ms", "40",
         "--itl-ms", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import time

        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        out = tmp_path / "guidellm.json"
        run = subprocess.run(
            [*GUIDELLM, "run", "--backend",
             f"kind=openai_http,target={url},model=mock,request_format=/v1/completions,validate_backend=false",
             "--profile", "kind=concurrent,streams=2", "--constraint", "kind=max_requests,count=8",
             "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
             "--data", "kind=synthetic_text,prompt_tokens=16,output_tokens=16",
             "--output", f"kind=json,path={out}", "--disable-progress"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        ours = tmp_path / "ours.json"
        mine = subprocess.run(
            [LLMTOOL, "bench", "--url", url, "--tokenizer", str(tokenizer), "-c", "2", "-n", "8", "--warmup", "1",
             "--input-len", "16", "--output-len", "16", "--json", str(ours)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert mine.returncode == 0, mine.stderr
    finally:
        server.terminate()
        server.wait(10)
    theirs = read_result(out)
    assert theirs.tool == "guidellm" and theirs.summary["num_completed"] == 8
    # The mock's own timings, through GuideLLM's records read our way (loose: a busy 2-core machine).
    assert 35 <= theirs.summary["ttft_ms"]["percentiles"]["p50"] <= 150
    assert 7 <= theirs.summary["tpot_ms"]["percentiles"]["p50"] <= 20
    done = compare(ours, out)
    assert done.returncode == 0 and "guidellm (guidellm)" in done.stdout, done.stderr
