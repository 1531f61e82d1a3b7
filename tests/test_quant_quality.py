"""The quality bar on the default model, 4-bit, group 64, held-out Hamlet perplexity (calibration
on the comedies): GPTQ's increase over the unquantized model <= 0.6x RTN's, AWQ's <= 0.8x RTN's.
The reports are those of the shared `llmtool quantize` runs (conftest `quantized`: 16 windows of
256 tokens, 4096 evaluation tokens). (8-bit RTN within 1%: test_quantize_cli.py.)"""

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def increase(report: dict) -> float:
    return report["ppl_after"] - report["ppl_before"]


def test_gptq_and_awq_beat_rtn_by_the_margins(quantized):
    reports = {method: quantized(method)[1] for method in ("rtn", "gptq", "awq")}
    for method, r in reports.items():
        print(f"{method}: ppl {r['ppl_before']:.3f} -> {r['ppl_after']:.3f}")
    rtn = increase(reports["rtn"])
    assert rtn > 0
    assert increase(reports["gptq"]) <= 0.6 * rtn, (increase(reports["gptq"]), rtn)
    assert increase(reports["awq"]) <= 0.8 * rtn, (increase(reports["awq"]), rtn)
    # Same unquantized model and evaluation text under every method.
    assert len({r["ppl_before"] for r in reports.values()}) == 1
    assert {r["evaluation_tokens"] for r in reports.values()} == {4096}
