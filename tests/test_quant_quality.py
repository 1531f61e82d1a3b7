"""The quality bar on the default model, 4-bit, group 64, held-out Hamlet perplexity (calibration
on the comedies): GPTQ's increase over the unquantized model <= 0.6x RTN's, AWQ's <= 0.8x RTN's.
(8-bit RTN within 1%: test_quantize_cli.py.) One quantize_model call per method, in-process."""

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

EVAL_TOKENS = 8192


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from llmtool.core.quant.config import QuantConfig
    from llmtool.core.quant.pipeline import quantize_model

    out = {}
    for method in ("rtn", "gptq", "awq"):
        config = QuantConfig(method=method, bits=4, group_size=64, eval_tokens=EVAL_TOKENS)
        out[method] = quantize_model("smollm2-135m", tmp_path_factory.mktemp(method) / "q", config)
        r = out[method]
        print(f"{method}: ppl {r.ppl_before:.3f} -> {r.ppl_after:.3f} in {r.quantize_seconds:.1f} s")
    return out


def increase(report) -> float:
    return report.ppl_after - report.ppl_before


def test_gptq_and_awq_beat_rtn_by_the_margins(reports):
    rtn = increase(reports["rtn"])
    assert rtn > 0
    assert increase(reports["gptq"]) <= 0.6 * rtn, (increase(reports["gptq"]), rtn)
    assert increase(reports["awq"]) <= 0.8 * rtn, (increase(reports["awq"]), rtn)
    # Same unquantized model and evaluation text under every method.
    assert len({r.ppl_before for r in reports.values()}) == 1
