"""Bench metric math on hand-built records whose every value is worked out by hand."""

import json

import numpy as np
import pytest

from llmtool.core.bench.metrics import Stats, summarize
from llmtool.core.bench.records import RequestRecord
from llmtool.core.bench.slo import parse_slo


def _done(index, scheduled, sent, chunk_times, chunk_tokens, **kw) -> RequestRecord:
    return RequestRecord(
        index=index,
        scheduled=scheduled,
        sent=sent,
        first_token=chunk_times[0],
        end=chunk_times[-1],
        chunk_times=list(chunk_times),
        chunk_tokens=list(chunk_tokens),
        **kw,
    )


def _run() -> list[RequestRecord]:
    """Three completed requests, four failed ones. Worked out (ms):
    A: TTFT 100 (sent 10 ms late: 90 if timed from sent), E2E 250, 4 tokens -> TPOT 150/3 = 50,
       ITL 30 then a 2-token chunk after 120 -> 60, 60.
    B: TTFT 200, E2E 200, one token: no TPOT, no ITL.
    C: TTFT 500 (sent 200 ms late: 300 if timed from sent), E2E 1000, TPOT 500/3, ITL 100, 100, 300.
    """
    return [
        _done(0, 0.0, 0.010, [0.100, 0.130, 0.250], [1, 1, 2], prompt_tokens=10, prompt_len=9,
              output_tokens=4, client_output_tokens=4),
        _done(1, 0.5, 0.5, [0.7], [1], prompt_len=7, output_tokens=1, client_output_tokens=2),
        _done(2, 1.0, 1.2, [1.5, 1.6, 1.7, 2.0], [1, 1, 1, 1], prompt_tokens=20, prompt_len=20,
              output_tokens=4, client_output_tokens=5),
        # Timed out mid-stream, after the last completion: neither its latencies nor its end count.
        RequestRecord(3, 1.5, sent=1.5, first_token=1.8, end=2.5, chunk_times=[1.8, 2.5],
                      chunk_tokens=[1, 1], output_tokens=2, error="timeout"),
        RequestRecord(4, 2.0, sent=2.0, error="http_503"),
        RequestRecord(5, 2.1, sent=None, error="connect"),
        RequestRecord(6, 0.2, sent=0.2),  # ended cleanly with no text at all
    ]  # fmt: skip


def test_counts_and_errors_by_kind():
    s = summarize(_run())
    assert (s.num_total, s.num_completed, s.num_failed) == (7, 3, 4)
    assert s.errors == {"timeout": 1, "http_503": 1, "connect": 1, "no_output": 1}
    assert s.error_rate == pytest.approx(4 / 7)


def test_duration_first_dispatch_to_last_completion():
    # First dispatch: A's actual send at 0.010 (not its schedule, 0.0); last completion: C at 2.0
    # (the failed request ending at 2.5 does not count).
    assert summarize(_run()).duration_s == pytest.approx(1.99)


def test_duration_counts_a_failed_request_dispatched_first():
    early_fail = RequestRecord(9, 0.0, sent=0.0, error="http_500")
    ok = _done(0, 0.5, 0.6, [1.0, 1.5], [1, 1], output_tokens=2)
    assert summarize([early_fail, ok]).duration_s == pytest.approx(1.5)
    # A request never sent dispatches at its scheduled time.
    never_sent = RequestRecord(9, 0.25, sent=None, error="connect")
    assert summarize([never_sent, ok]).duration_s == pytest.approx(1.25)


def test_throughputs():
    s = summarize(_run())
    assert s.num_output_tokens == 9  # 4 + 1 + 4, server counts; the timed-out request's 2 excluded
    assert s.num_prompt_tokens == 37  # usage 10 (not prompt_len 9) + prompt_len 7 (no usage) + 20
    assert s.request_throughput == pytest.approx(3 / 1.99)
    assert s.output_throughput == pytest.approx(9 / 1.99)
    assert s.total_token_throughput == pytest.approx(46 / 1.99)


def test_ttft_from_scheduled_time_not_sent_time():
    s = summarize(_run())
    assert s.ttft_ms.count == 3
    assert s.ttft_ms.min == pytest.approx(100)
    assert s.ttft_ms.max == pytest.approx(500)
    assert s.ttft_ms.mean == pytest.approx(800 / 3)  # 700 / 3 if timed from sent


def test_percentiles_are_linear_interpolation():
    s = summarize(_run(), percentiles=(50, 90, 99.9))
    # TTFT [100, 200, 500]: p90 sits 0.8 of the way from 200 to 500 (lower/nearest would give 200/500).
    assert s.ttft_ms.percentiles == pytest.approx({"p50": 200, "p90": 440, "p99.9": 499.4})
    assert s.value("ttft_ms", "p99.9") == pytest.approx(499.4)


def test_e2e_and_tpot_exclude_one_token_requests():
    s = summarize(_run())
    assert s.e2e_ms.count == 3
    assert s.e2e_ms.mean == pytest.approx((250 + 200 + 1000) / 3)
    assert s.tpot_ms.count == 2  # B has one output token
    assert s.tpot_ms.min == pytest.approx(50)
    assert s.tpot_ms.max == pytest.approx(500 / 3)


def test_itl_pooled_with_k_token_chunks_split():
    s = summarize(_run(), percentiles=(50,))
    # A: 30, 60, 60 (the 120 ms gap before its 2-token chunk split in two); C: 100, 100, 300.
    assert s.itl_ms.count == 6
    assert s.itl_ms.mean == pytest.approx(650 / 6)
    assert s.itl_ms.max == pytest.approx(300)
    assert s.itl_ms.percentiles["p50"] == pytest.approx(80)  # midway between 60 and 100


def test_output_tokens_and_token_cross_check():
    s = summarize(_run())
    assert s.output_tokens.mean == pytest.approx(3)
    assert (s.output_tokens.min, s.output_tokens.max) == (1, 4)
    # A agrees (4/4); B 1 vs 2 (rel 1.0); C 4 vs 5 (rel 0.25).
    assert s.token_check.num_compared == 3
    assert s.token_check.num_mismatched == 2
    assert s.token_check.max_rel_diff == pytest.approx(1.0)


def test_output_tokens_fall_back_when_usage_missing():
    r = _done(0, 0.0, 0.0, [0.1, 0.2, 0.3], [1, 2, 1])  # no usage, no client count: 4 from chunks
    s = summarize([r])
    assert s.num_output_tokens == 4
    assert s.token_check.num_compared == 0 and s.token_check.max_rel_diff is None
    assert s.tpot_ms.mean == pytest.approx(200 / 3)


def test_client_lag():
    s = summarize(_run(), percentiles=(50,))
    # sent - scheduled over the six sent requests: 10, 0, 200, 0, 0, 0 ms; p99 is always there.
    assert s.client_lag_ms.count == 6
    assert s.client_lag_ms.mean == pytest.approx(35)
    assert s.client_lag_ms.max == pytest.approx(200)
    assert s.value("client_lag_ms", "p99") == pytest.approx(np.percentile([10, 0, 200, 0, 0, 0], 99))


def test_goodput_counts_requests_meeting_every_per_request_slo():
    run = _run()
    slos = [parse_slo("ttft_p99_ms=300"), parse_slo("tpot_p99_ms=100"), parse_slo("error_rate=0.01")]
    s = summarize(run, slos=slos)
    # A (TTFT 100, TPOT 50) and B (TTFT 200, no TPOT: passes) meet both; C (TTFT 500) does not.
    # error_rate is a run-level SLO and judges no single request.
    assert s.goodput == pytest.approx(2 / 1.99)
    assert s.goodput_slos == ("ttft_p99_ms=300", "tpot_p99_ms=100")
    assert summarize(run, slos=[parse_slo("tpot_p99_ms=40")]).goodput == pytest.approx(1 / 1.99)  # B only
    # Per-request ITL: the SLO's stat over the request's own gaps. A: max 60, p50 60; C: max 300, p50 100
    # (a max-gap rule would fail C under itl_p50_ms<=101).
    assert summarize(run, slos=[parse_slo("itl_max_ms=50")]).goodput == pytest.approx(1 / 1.99)
    assert summarize(run, slos=[parse_slo("itl_max_ms=61")]).goodput == pytest.approx(2 / 1.99)
    assert summarize(run, slos=[parse_slo("itl_p50_ms<=101")]).goodput == pytest.approx(3 / 1.99)
    # No per-request SLO: every completed request counts.
    assert summarize(run).goodput == pytest.approx(3 / 1.99)


def test_slo_percentiles_are_computed_even_if_not_requested():
    s = summarize(_run(), percentiles=(50,), slos=[parse_slo("e2e_p99.9_s=2")])
    assert s.percentiles == (50.0, 99.9)
    assert s.value("e2e_ms", "p99.9") == pytest.approx(np.percentile([250, 200, 1000], 99.9))


def test_value_by_name():
    s = summarize(_run())
    assert s.value("tpot_ms", "mean") == pytest.approx((50 + 500 / 3) / 2)
    assert s.value("ttft_ms", "p99") == pytest.approx(494)
    assert s.value("error_rate") == pytest.approx(4 / 7)
    assert s.value("request_throughput", None) == pytest.approx(3 / 1.99)
    assert s.value("goodput") == pytest.approx(3 / 1.99)
    for metric, stat in [("ttft_ms", None), ("error_rate", "p99"), ("nope", None), ("ttft_ms", "p99.9")]:
        with pytest.raises(KeyError):
            s.value(metric, stat)


def test_nothing_completed_is_unmeasurable_not_zero():
    s = summarize([RequestRecord(0, 0.0, sent=0.0, error="http_500")])
    assert s.error_rate == 1.0
    assert s.duration_s is None and s.request_throughput is None and s.goodput is None
    assert s.ttft_ms.count == 0 and s.value("ttft_ms", "p99") is None and s.ttft_ms.mean is None
    empty = summarize([])
    assert empty.num_total == 0 and empty.error_rate is None


def test_stats_match_numpy_on_random_data():
    rng = np.random.default_rng(0)
    ttfts = rng.exponential(0.2, size=101)
    records = [_done(i, float(i), float(i), [i + t, i + t + 0.01], [1, 1]) for i, t in enumerate(ttfts)]
    got = summarize(records, percentiles=(50, 90, 95, 99, 99.9)).ttft_ms
    want_ms = ttfts * 1000
    assert got.std == pytest.approx(np.std(want_ms), rel=1e-6)
    for p in (50, 90, 95, 99, 99.9):
        assert got.get(f"p{p}") == pytest.approx(np.percentile(want_ms, p), rel=1e-6)


def test_stats_of_empty_percentile_keys():
    assert Stats.of([], (50, 99.9)).percentiles == {"p50": None, "p99.9": None}


def test_to_dict_is_json():
    d = json.loads(json.dumps(summarize(_run(), slos=[parse_slo("ttft_p99_ms=300")]).to_dict()))
    assert d["num_completed"] == 3
    assert d["errors"]["http_503"] == 1
    assert d["ttft_ms"]["percentiles"]["p50"] == pytest.approx(200)
    assert d["token_check"]["num_mismatched"] == 2
