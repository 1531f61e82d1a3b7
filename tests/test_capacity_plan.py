"""Capacity layer 4 and the command: the search, `llmtool plan-capacity`, and calibration.

Pure Python except the CLI subprocesses (a few seconds each, for the <10 s acceptance and
exit codes); calibration is checked here on synthetic bench runs with known factors, and
against the real server in tests/test_capacity_loop.py.
"""

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from llmtool.core.capacity.calibrate import calibrate
from llmtool.core.capacity.catalog import GPUSpec, gpu, model_spec
from llmtool.core.capacity.planner import PlanRequest, plan
from llmtool.core.capacity.simulator import Replica, simulate
from llmtool.core.capacity.slo import LatencySLO
from llmtool.core.capacity.step_time import Efficiency
from llmtool.core.capacity.traffic import Traffic, requests

LLMTOOL = str(Path(sys.executable).with_name("llmtool"))
LLAMA_8B, LLAMA_70B = model_spec("Llama-3.1-8B"), model_spec("Llama-3.1-70B")
H100 = gpu("H100-SXM")
SLOS = (LatencySLO("ttft", 95, 500), LatencySLO("tpot", 95, 50))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [LLMTOOL, "plan-capacity", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )


def request(rps: float, **kw) -> PlanRequest:
    base = dict(model=LLAMA_8B, gpus=(H100,), rps=rps, traffic=Traffic(rate=1.0, num_requests=300), slos=SLOS)
    return PlanRequest(**{**base, **kw})


def test_plan_meets_the_slos_at_rate_plus_headroom_and_is_minimal():
    res = plan(request(40.0, quants=("bf16",), tps=(1,)))
    best = res.best
    assert best is not None and best.candidate.tp == 1 and best.candidate.quant == "bf16"
    assert all(v <= s.ms for s, v in zip(SLOS, best.slo_values.values(), strict=True))
    # One replica fewer, at its share of 40 x 1.2 req/s, must miss an SLO (or saturate).
    if best.replicas > 1:
        from llmtool.core.capacity.planner import simulate_at

        fewer = simulate_at(res.request, best.candidate, 40 * 1.2 / (best.replicas - 1))
        assert fewer.saturated or not all(s.holds(fewer) for s in SLOS)
    # More traffic never needs fewer GPUs.
    assert plan(request(120.0, quants=("bf16",), tps=(1,))).best.total_gpus >= best.total_gpus


def test_405b_on_one_gpu_is_rejected_with_the_shortfall():
    res = plan(request(1.0, model=model_spec("Llama-3.1-405B"), quants=("bf16",), tps=(1,)))
    assert res.best is None
    (why,) = {r.reason for r in res.rejected}
    assert why.startswith("does not fit") and "short" in why and "GB" in why


def test_an_slo_no_replica_count_can_meet_is_reported_not_searched_forever():
    t = time.perf_counter()
    res = plan(request(10.0, slos=(LatencySLO("tpot", 95, 1.0),)))  # 1 ms TPOT: faster than HBM allows
    assert res.best is None and time.perf_counter() - t < 5
    assert any("lone request" in r.reason for r in res.rejected)


def test_cheaper_gpu_wins_when_price_is_overridden():
    both = (H100, gpu("H200"))
    res = plan(request(30.0, model=LLAMA_70B, gpus=both))
    per = res.best_per_gpu()
    assert per["H100-SXM"] is not None and per["H200"] is not None
    cheap_h200 = plan(request(30.0, model=LLAMA_70B, gpus=both, prices={"H200": 0.5}))
    assert cheap_h200.best.candidate.gpu.name == "H200"


def test_cli_50_rps_70b_on_h100_in_under_10_seconds(tmp_path):
    out = tmp_path / "plan.json"
    t = time.perf_counter()
    done = run_cli(
        "--rps", "50", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--ttft-p95", "500", "--tpot-p95", "50",
        "--json", str(out),
    )  # fmt: skip
    elapsed = time.perf_counter() - t
    assert done.returncode == 0, done.stderr
    assert elapsed < 10, f"plan took {elapsed:.1f} s"
    data = json.loads(out.read_text())
    rec = data["recommendation"]
    assert rec["gpu"] == "H100-SXM" and rec["total_gpus"] == rec["replicas"] * rec["tp"]
    assert rec["latency"]["ttft_ms"]["p95"] <= 500 and rec["latency"]["tpot_ms"]["p95"] <= 50
    assert rec["memory"]["fits"] and rec["memory"]["weights_gb"] > 0
    assert rec["cost_per_1k_output_tokens"] > 0
    # Goodput: requests/s per replica whose own TTFT and TPOT meet the bounds; p95 holds, so
    # at least ~95% of the simulated per-replica rate.
    per_replica = 50 * 1.2 / rec["replicas"]
    assert 0.9 * per_replica <= rec["goodput_rps_per_replica"] <= per_replica
    assert any("does not fit" in r["reason"] for r in data["rejected"])  # 70B bf16 on one H100


def test_cli_table_explain_and_compare():
    done = run_cli(
        "--rps", "20", "--model", "Llama-3.1-8B", "--compare-gpus", "h100-sxm,a100-80gb,l40s",
        "--slo-preset", "mlperf-interactive", "--explain",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for needle in (
        "Recommendation",
        "Best per GPU type",
        "A100-80GB",
        "L40S",
        "Step time",
        "Simulation",
        "Search",
    ):
        assert needle in text, needle


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    cases = [
        (("--rps", "-1", "--model", "llama-3.1-8b", "--ttft-p95", "500"), "positive"),
        (("--rps", "5", "--model", "llama-3.1-8b", "--gpu", "tpu-v9", "--ttft-p95", "500"), "unknown GPU"),
        (("--rps", "5", "--model", "no-such-model", "--ttft-p95", "500"), "unknown model"),
        (("--rps", "5", "--model", "llama-3.1-8b", "--quant", "fp4", "--ttft-p95", "500"), "unknown --quant"),
        (("--rps", "5", "--model", "llama-3.1-8b", "--slo-preset", "fast"), "unknown SLO preset"),
        (("--rps", "5", "--model", "llama-3.1-8b", "--predict"), "--predict needs"),
        (("--calibrate", str(tmp_path / "missing.json")), "cannot read"),
        (
            ("--replay", str(tmp_path / "missing.json"), "--model", "llama-3.1-8b", "--ttft-p95", "500"),
            "cannot read",
        ),
        (("--model", "llama-3.1-8b", "--ttft-p95", "500"), "give --rps"),
    ]
    for args, needle in cases:
        done = run_cli(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_no_slo_flag_plans_for_the_interactive_preset_and_says_so():
    """Without an SLO flag the plan is held to the documented default (TTFT p95 <= 500 ms, TPOT
    p95 <= 50 ms), not refused; the output and the JSON both name it as the default."""
    done = run_cli("--rps", "5", "--model", "llama-3.1-8b", "--json", "-")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["slos"] == {"ttft_p95_ms": 500, "tpot_p95_ms": 50}
    assert data["slo_source"] == {"preset": "interactive", "default": True, "flags": []}
    table = run_cli("--rps", "5", "--model", "llama-3.1-8b")
    assert table.returncode == 0, table.stderr
    flat = " ".join(table.stdout.split())
    assert "ttft_p95_ms <= 500, tpot_p95_ms <= 50 (the default, preset 'interactive'" in flat
    # A flag replaces the default; a preset is named as such, and flags add to it.
    own = json.loads(
        run_cli("--rps", "5", "--model", "llama-3.1-8b", "--ttft-p95", "800", "--json", "-").stdout
    )
    assert own["slos"] == {"ttft_p95_ms": 800} and own["slo_source"]["default"] is False
    both = run_cli("--rps", "5", "--model", "llama-3.1-8b", "--slo-preset", "mlperf-server", "--e2e-p95", "9000",
                   "--json", "-")  # fmt: skip
    assert json.loads(both.stdout)["slos"] == {"ttft_p99_ms": 2000, "tpot_p99_ms": 200, "e2e_p95_ms": 9000}
    assert "interactive (TTFT p95 500, TPOT p95 50 ms)" in " ".join(run_cli("--help").stdout.split())


def test_no_configuration_exits_1_with_a_reason():
    done = run_cli("--rps", "1", "--model", "Llama-3.1-405B", "--gpu", "l4", "--ttft-p95", "500")
    assert done.returncode == 1
    assert "No configuration meets the SLOs" in done.stdout


CPU = GPUSpec("test-cpu", 8 * 2**30, 50e9, 1e12, None, 2e12, 1e9, 0.0, "test")
TRUE_EFF = Efficiency(
    memory=0.45, compute=0.25, step_overhead_s=3e-3, per_seq_overhead_s=2e-4, allreduce_latency_s=0
)


def _synthetic_bench(rate: float, smol, n: int = 120) -> dict:
    """A bench JSON as `llmtool bench --json` writes it, from a simulation with known factors."""
    rep = Replica(smol, CPU, num_kv_blocks=20000, max_num_seqs=64, max_num_batched_tokens=2048, eff=TRUE_EFF)
    reqs = requests(Traffic(input_len=128, output_len=32, rate=rate, num_requests=n, seed=3))
    res = simulate(rep, reqs, warmup_share=0.0)
    records = [
        {"scheduled": r.arrival, "first_token": r.arrival + ttft, "end": r.arrival + e2e,
         "prompt_tokens": r.prompt_len, "output_tokens": r.output_len, "chunk_tokens": [1] * r.output_len}
        for r, ttft, e2e in zip(reqs, res.ttft_s, res.e2e_s, strict=True)
    ]  # fmt: skip
    return {"config": {"load": {"rate": rate, "concurrency": None}}, "records": records}, res


def test_calibration_recovers_known_factors_and_predicts_other_rates():
    smol = model_spec("SmolLM2-135M")
    bench, _ = _synthetic_bench(5.0, smol)
    rep = Replica(smol, CPU, num_kv_blocks=20000, max_num_seqs=64, max_num_batched_tokens=2048)
    cal = calibrate(bench, smol, CPU, rep)
    assert cal.rms_log_error < 0.05, (cal.measured, cal.predicted)
    for rate in (2.5, 7.0):
        _, truth = _synthetic_bench(rate, smol)
        fitted = simulate(
            replace(rep, eff=cal.eff),
            requests(Traffic(input_len=128, output_len=32, rate=rate, num_requests=120, seed=3)),
            warmup_share=0.0,
        )
        for metric in ("ttft", "tpot"):
            assert fitted.percentile(metric, 95) == pytest.approx(truth.percentile(metric, 95), rel=0.15), (
                rate,
                metric,
            )
        assert fitted.throughput == pytest.approx(truth.throughput, rel=0.1)


def test_predict_replays_a_recorded_bench_run(tmp_path):
    """--replay simulates the run's own requests (send times, token counts), at its recorded
    rate or time-scaled to --rps, and measures every one of them as the bench did."""
    from llmtool.core.capacity.run import PlanArgs, run_plan
    from llmtool.core.capacity.traffic import from_bench

    smol = model_spec("SmolLM2-135M")
    bench, _ = _synthetic_bench(5.0, smol)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    pinned = dict(
        model="SmolLM2-135M", gpus=("L4",), quants=("bf16",), tps=(1,), max_batches=(64,), predict=True
    )
    data = run_plan(PlanArgs(rps=None, replay=path, **pinned))
    trace = from_bench(bench["records"])
    assert data["traffic"] == {"arrivals": "replay", "source": str(path), "requests": 120}
    assert data["rps"] == pytest.approx(119 / trace[-1].arrival)
    assert data["simulation"]["measured_requests"] == 120  # no warm-up share dropped
    direct = simulate(
        Replica(smol, gpu("L4"), num_kv_blocks=10**6, max_num_seqs=64, max_num_batched_tokens=2048),
        trace,
        warmup_share=0.0,
    )
    assert data["prediction"]["latency"]["tpot_ms"]["p95"] == pytest.approx(
        1000 * direct.percentile("tpot", 95), rel=5e-3
    )
    faster = run_plan(PlanArgs(rps=3 * data["rps"], replay=path, **pinned))
    assert faster["rps"] == pytest.approx(3 * data["rps"])
    assert faster["prediction"]["latency"]["ttft_ms"]["p95"] > data["prediction"]["latency"]["ttft_ms"]["p95"]
