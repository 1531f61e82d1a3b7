"""Closing the loop on this machine (issue acceptance): calibrate `cpu-local` from a bench run
of `llmtool serve` on the default model at one rate, predict two other rates, compare with what
`llmtool bench` measured there: throughput within 20%, TTFT/TPOT p95 within 30%. The rates are
0.3, 0.55 and 0.75 x what the server sustains with 8 requests in flight (about 1.8, 3.3, 4.5
req/s here), so a slower CI machine runs the same loads, not a saturated server.

The procedure is bench/plan_bench.py's (`make bench-plan`). About 3.5 minutes: one server, a
warm-up and three bench runs of 160 requests back to back, a calibration, and per predicted
rate a replay of that run's send times and token counts (`plan-capacity --predict --replay`),
which is what is compared. The Poisson prediction at the same rate is printed too, not
compared: one 160-request Poisson draw is too bursty (bench/plan_bench.py's docstring).
"""

import pytest
import torch

from bench.plan_bench import NUM_REQUESTS, closing_loop
from llmtool.core.runtime import resolve_dtype

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_model,
    # The loop predicts with `--quant bf16` (plan-capacity models bf16, fp8, int8 and int4 weights,
    # not fp32), so it means something only where the server runs the model in bf16: CPUs with
    # AVX512_BF16. Elsewhere the server runs fp32 (twice the bytes, AVX2 FLOPs): on such a
    # machine (AMD EPYC, AVX2) the server sustained 0.93 req/s at c=8, the three runs took 19
    # minutes and the predictions missed. Modelling fp32 weights is the fix, not looser bounds.
    pytest.mark.skipif(
        resolve_dtype(None, torch.device("cpu")) != torch.bfloat16,
        reason="the server runs fp32 on this CPU (no AVX512_BF16); plan-capacity models bf16 and below",
    ),
]

BOUNDS = {"output_throughput": 0.20, "ttft_p95_ms": 0.30, "tpot_p95_ms": 0.30}


def test_calibrated_cpu_profile_predicts_other_rates(tmp_path):
    result = closing_loop(num_requests=NUM_REQUESTS, workdir=tmp_path)
    misses = []
    for rate, row in result["predictions"].items():
        for key, bound in BOUNDS.items():
            m, p, q = row["measured"][key], row["predicted"][key], row["poisson"][key]
            line = (
                f"{rate} req/s {key}: measured {m:.1f}, predicted {p:.1f} ({p / m:.2f}; Poisson {q / m:.2f})"
            )
            print(line)
            if abs(p / m - 1) > bound:
                misses.append(line)
    eff = result["calibration"]["efficiency"]
    print(f"calibrated at {result['calibration_rate']} req/s: {eff}")
    assert not misses, f"predictions outside the bounds: {misses}"
