"""SLO expressions: parsing, the CI gate's verdict and messages, and the per-request test."""

import pytest

from llmtool.core.bench.metrics import summarize
from llmtool.core.bench.records import RequestRecord
from llmtool.core.bench.slo import SLO, evaluate, parse_slo, per_request_ok
from llmtool.core.errors import UsageError


@pytest.mark.parametrize(
    "text,metric,stat,op,threshold",
    [
        ("ttft_p99_ms=500", "ttft_ms", "p99", "<=", 500),
        ("tpot_p99_ms=50", "tpot_ms", "p99", "<=", 50),
        ("e2e_p50_ms=2000", "e2e_ms", "p50", "<=", 2000),
        ("itl_p95_ms=30", "itl_ms", "p95", "<=", 30),
        ("ttft_mean_ms=300", "ttft_ms", "mean", "<=", 300),
        ("e2e_p50_s=2", "e2e_ms", "p50", "<=", 2000),  # seconds become ms
        ("tpot_max_s<=0.05", "tpot_ms", "max", "<=", 50),
        ("ttft_p99.9_ms=800", "ttft_ms", "p99.9", "<=", 800),
        ("ttft_p99.90_ms=800", "ttft_ms", "p99.9", "<=", 800),  # one spelling of each percentile
        ("itl_std_ms=5", "itl_ms", "std", "<=", 5),
        ("ttft_p50_ms>=10", "ttft_ms", "p50", ">=", 10),  # explicit operator wins
        (" TTFT_P99_MS = 500 ", "ttft_ms", "p99", "<=", 500),
        ("error_rate=0.01", "error_rate", None, "<=", 0.01),
        ("error_rate<=0", "error_rate", None, "<=", 0),
        ("output_throughput>=100", "output_throughput", None, ">=", 100),
        ("output_throughput=100", "output_throughput", None, ">=", 100),  # `=`: throughput is a floor
        ("request_throughput>=2", "request_throughput", None, ">=", 2),
        ("total_token_throughput=500", "total_token_throughput", None, ">=", 500),
        ("goodput=1", "goodput", None, ">=", 1),
        ("goodput<=5", "goodput", None, "<=", 5),
    ],
)
def test_parse_valid(text, metric, stat, op, threshold):
    slo = parse_slo(text)
    assert (slo.metric, slo.stat, slo.op) == (metric, stat, op)
    assert slo.threshold == pytest.approx(threshold)
    assert slo.text == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ttft",
        "ttft_p99_ms",
        "ttft_p99_ms=abc",
        "ttft_p99_ms=-1",
        "ttft_p99_ms=nan",
        "ttft_p99_ms=inf",
        "ttft_p99=500",  # no unit
        "ttft_ms=500",  # no stat
        "ttft_p99_us=500",
        "ttfb_p99_ms=500",
        "ttft_p101_ms=5",
        "ttft_median_ms=5",
        "ttft_p99_ms<500",
        "ttft_p99_ms=500=3",
        "error_rate=2",  # a fraction, not a percentage
        "error_rate_p99=0.1",
        "goodput_p99=1",
    ],
)
def test_parse_invalid_is_one_usage_line(text):
    with pytest.raises(UsageError) as info:
        parse_slo(text)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"bad SLO '{text}'")
    assert "ttft_p99_ms=500" in msg and "error_rate=0.01" in msg and "goodput>=1" in msg
    assert info.value.exit_code == 2


def _records() -> list[RequestRecord]:
    """TTFTs 100, 200, 500 ms (p99 = 494 by linear interpolation); one http_500 of four."""
    out = []
    for i, (ttft, e2e) in enumerate([(0.1, 0.3), (0.2, 0.4), (0.5, 0.9)]):
        out.append(
            RequestRecord(i, float(i), sent=float(i), first_token=i + ttft, end=i + e2e,
                          chunk_times=[i + ttft, i + e2e], chunk_tokens=[1, 1], output_tokens=2)
        )  # fmt: skip
    out.append(RequestRecord(3, 3.0, sent=3.0, error="http_500"))
    return out


def _violations(*texts: str) -> list[str]:
    slos = [parse_slo(t) for t in texts]
    return [v.message for v in evaluate(summarize(_records(), slos=slos), slos)]


def test_evaluate_passes():
    # Bounds met, including equality (TTFT max is exactly 500 ms).
    assert _violations("ttft_p99_ms=500", "ttft_max_ms=500", "error_rate=0.25", "e2e_p50_s=0.5") == []


def test_evaluate_messages_one_line_each():
    got = _violations("ttft_p99_ms=400", "ttft_p99_s=0.4", "error_rate=0.01", "ttft_mean_ms=300")
    assert got == [
        "SLO violated: ttft_p99_ms = 494.0 > 400",
        "SLO violated: ttft_p99_s = 0.494 > 0.4",  # in the unit the user wrote
        "SLO violated: error_rate = 0.25 > 0.01",
    ]


def test_evaluate_lower_bounds():
    # 3 completed over 0.0 -> 2.9 s: 1.034 req/s; outputs 2 tokens each.
    got = _violations("request_throughput>=2", "request_throughput>=1", "output_throughput=2.1")
    assert got == [
        "SLO violated: request_throughput = 1.034 < 2",
        "SLO violated: output_throughput = 2.069 < 2.1",
    ]


def test_evaluate_goodput_under_its_slos():
    # Goodput judged on ttft <= 250 ms: 2 good requests / 2.9 s = 0.69 req/s.
    assert _violations("ttft_p50_ms=250", "goodput>=0.6") == []
    assert _violations("ttft_p50_ms=250", "goodput>=1") == ["SLO violated: goodput = 0.6897 < 1"]


def test_unmeasurable_is_a_violation():
    failed = [RequestRecord(0, 0.0, sent=0.0, error="timeout")]
    slos = [parse_slo("ttft_p99_ms=500"), parse_slo("request_throughput>=1"), parse_slo("error_rate=1")]
    violations = evaluate(summarize(failed, slos=slos), slos)
    assert [v.message for v in violations] == [
        "SLO violated: ttft_p99_ms could not be measured (no completed requests)",
        "SLO violated: request_throughput could not be measured (no completed requests)",
    ]
    assert violations[0].value is None and violations[0].slo == slos[0]
    # Completed, but all single-token: no TPOT anywhere.
    one = [RequestRecord(0, 0.0, sent=0.0, first_token=0.1, end=0.1, chunk_times=[0.1], chunk_tokens=[1])]
    slo = parse_slo("tpot_p99_ms=50")
    [v] = evaluate(summarize(one, slos=[slo]), [slo])
    assert "could not be measured (no completed request had more than one output token)" in v.message


def _req(ttft: float, e2e: float, n: int, **kw) -> RequestRecord:
    times = [ttft + (e2e - ttft) * i / max(n - 1, 1) for i in range(n)]
    return RequestRecord(0, 0.0, sent=0.0, first_token=ttft, end=e2e, chunk_times=times,
                         chunk_tokens=[1] * n, output_tokens=n, **kw)  # fmt: skip


def test_per_request_ok():
    ttft, tpot = parse_slo("ttft_p99_ms=500"), parse_slo("tpot_p99_ms=60")
    fast, slow_first, slow_tokens = _req(0.1, 0.2, 3), _req(0.6, 0.7, 3), _req(0.1, 0.3, 3)  # TPOT 50/50/100
    assert per_request_ok(fast, [ttft, tpot])
    assert not per_request_ok(slow_first, [ttft, tpot])
    assert not per_request_ok(slow_tokens, [ttft, tpot])
    assert per_request_ok(_req(0.1, 0.1, 1), [tpot, parse_slo("itl_max_ms=1")])  # one token: no TPOT/ITL
    assert not per_request_ok(_req(0.1, 0.1, 1), [parse_slo("e2e_max_ms=50")])
    # Run-level SLOs and spreads judge no single request.
    assert per_request_ok(slow_tokens, [parse_slo("error_rate=0"), parse_slo("tpot_std_ms=1")])
    # A failed request never counts, whatever its partial stream looked like.
    assert not per_request_ok(_req(0.1, 0.2, 3, error="disconnect"), [])


def test_slo_name_and_flags():
    assert parse_slo("e2e_p99.9_s=2").name == "e2e_p99.9_s"
    assert parse_slo("error_rate=0.1").name == "error_rate"
    assert parse_slo("ttft_mean_ms=1").is_per_request
    assert not parse_slo("goodput>=1").is_per_request
    assert SLO("ttft_ms", "p99", "<=", 500.0, "x", "ms").holds(500.0)
    assert not SLO("goodput", None, ">=", 1.0, "x").holds(0.99)
