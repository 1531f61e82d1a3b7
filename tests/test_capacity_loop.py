"""Closing the loop on this machine (issue acceptance): calibrate `cpu-local` from a bench
run of `llmtool serve` on the default model at one rate, predict two other rates, compare
with what `llmtool bench` measured there: throughput within 20%, TTFT/TPOT p95 within 30%.

The procedure is bench/plan_bench.py's (`make bench-plan` runs it with more requests).
About a minute: one server, three bench runs back to back, a calibration, two predictions.
"""

import pytest

from bench.plan_bench import closing_loop

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

BOUNDS = {"output_throughput": 0.20, "ttft_p95_ms": 0.30, "tpot_p95_ms": 0.30}


def test_calibrated_cpu_profile_predicts_other_rates(tmp_path):
    result = closing_loop((2.0, 4.0, 6.0), num_requests=60, workdir=tmp_path)
    failures = []
    for rate, row in result["predictions"].items():
        for key, bound in BOUNDS.items():
            m, p = row["measured"][key], row["predicted"][key]
            line = f"{rate} req/s {key}: measured {m:.1f}, predicted {p:.1f} ({p / m:.2f})"
            print(line)
            if abs(p / m - 1) > bound:
                failures.append(line)
    assert not failures, failures
