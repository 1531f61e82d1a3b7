"""Capacity layer 3: the simulator drives the engine's real Scheduler and BlockManager on a
virtual clock (core/capacity/simulator.py), and its predictions against published data.

Pure Python, a few seconds. Run with -s to see the predicted-vs-published table.
"""

from dataclasses import replace

import pytest

from llmtool.core.capacity.catalog import gpu, model_spec
from llmtool.core.capacity.memory import MemoryConfig, plan_memory
from llmtool.core.capacity.simulator import Replica, simulate
from llmtool.core.capacity.step_time import Efficiency, StepBatch, step_time
from llmtool.core.capacity.traffic import SimRequest, Traffic, from_bench, requests
from llmtool.core.errors import UsageError

LLAMA_8B = model_spec("Llama-3.1-8B")
LLAMA_70B = model_spec("Llama-3.1-70B")
H100, H200 = gpu("H100-SXM"), gpu("H200")


def replica(model=LLAMA_8B, g=H100, quant="bf16", tp=1, budget=2048, blocks=None, **kw) -> Replica:
    if blocks is None:
        blocks = plan_memory(model, g, MemoryConfig(quant=quant, tp=tp, context_len=4096)).num_kv_blocks
    return Replica(model, g, quant, tp, num_kv_blocks=blocks, max_num_batched_tokens=budget, **kw)


def test_a_lone_request_takes_exactly_its_steps():
    # One request, closed loop: 1024 prompt tokens in chunks of 512, then 31 decodes.
    rep = replica(budget=512)
    res = simulate(rep, [SimRequest(0.0, 1024, 32)], concurrency=1)

    def t(batch):
        return step_time(LLAMA_8B, H100, "bf16", 1, batch).total_s

    prefill = t(StepBatch.prefilling(512, 0)) + t(StepBatch.prefilling(512, 512))
    assert res.ttft_s[0] == pytest.approx(prefill, rel=1e-9)
    decodes = [t(StepBatch.decoding(1, 1024 + i)) for i in range(31)]
    assert res.tpot_s[0] == pytest.approx(sum(decodes) / 31, rel=1e-9)
    assert res.e2e_s[0] == pytest.approx(prefill + sum(decodes), rel=1e-9)
    assert res.num_steps == 2 + 31 and res.output_tokens == 32


def test_latency_grows_with_load_and_saturates_beyond_capacity():
    def run(rate):
        reqs = requests(Traffic(input_len=512, output_len=128, rate=rate, num_requests=300, seed=1))
        return simulate(replica(), reqs)

    light, medium, heavy, over = run(1), run(20), run(60), run(400)
    # Light load: each request nearly alone, so throughput equals what was offered.
    assert light.throughput == pytest.approx(1 * 128, rel=0.25)
    assert light.mean_batch < 2
    assert light.percentile("tpot", 50) < medium.percentile("tpot", 50) < heavy.percentile("tpot", 50)
    assert medium.mean_batch < heavy.mean_batch
    assert not heavy.saturated
    assert heavy.throughput == pytest.approx(60 * 128, rel=0.25)
    # Far beyond capacity the waiting queue runs away: flagged, latencies infinite.
    assert over.saturated and over.percentile("ttft", 95) == float("inf")


def test_prefix_share_hits_the_real_prefix_cache():
    def run(share):
        reqs = requests(Traffic(input_len=2048, output_len=16, rate=5, num_requests=100, prefix_share=share))
        return simulate(replica(), reqs)

    cold, warm = run(0.0), run(0.75)
    # 75% of every prompt is cached after the first request: prefill costs ~a quarter.
    assert warm.percentile("ttft", 50) < 0.45 * cold.percentile("ttft", 50)


def test_a_small_kv_cache_preempts_and_still_finishes_everything():
    reqs = requests(Traffic(input_len=256, output_len=256, concurrency=32, num_requests=64))
    tight = simulate(replica(blocks=200), reqs, concurrency=32)  # 3,200 tokens for 32 x 512
    roomy = simulate(replica(), reqs, concurrency=32)
    assert tight.num_preemptions > 0 and roomy.num_preemptions == 0
    assert len(tight.e2e_s) == len(roomy.e2e_s) == 64 - 6  # all finish; 10% warm-up left out
    assert tight.percentile("e2e", 50) > roomy.percentile("e2e", 50)


def test_traffic_and_replay_validate_their_input():
    with pytest.raises(UsageError, match="exactly one"):
        Traffic(rate=1, concurrency=2)
    with pytest.raises(UsageError, match="positive"):
        Traffic(rate=-1)
    with pytest.raises(UsageError, match="length distribution"):
        Traffic(rate=1, length_dist="zipf")
    lengths = [
        r.prompt_len for r in requests(Traffic(rate=1, input_len=100, length_dist="uniform", len_range=0.5))
    ]
    assert min(lengths) >= 50 and max(lengths) <= 150 and 90 < sum(lengths) / len(lengths) < 110
    records = [
        {"scheduled": 1.5, "first_token": 1.6, "prompt_tokens": 10, "output_tokens": 4},
        {"scheduled": 1.0, "first_token": 1.2, "prompt_tokens": 12, "output_tokens": 5},
        {"scheduled": 2.0, "error": "timeout", "first_token": None},
    ]
    replay = from_bench(records)
    assert [(r.arrival, r.prompt_len, r.output_len) for r in replay] == [(0.0, 12, 5), (0.5, 10, 4)]
    with pytest.raises(UsageError, match="no completed request"):
        from_bench(records[2:])
    with pytest.raises(UsageError, match="does not fit in the KV cache"):
        simulate(replica(blocks=4), [SimRequest(0.0, 100, 10)])


def test_replayed_run_is_time_scaled_to_a_rate_keeping_its_bursts_and_lengths():
    trace = [
        SimRequest(0.0, 100, 10),
        SimRequest(0.1, 120, 20),
        SimRequest(0.2, 90, 5),
        SimRequest(2.0, 300, 7),
    ]
    recorded = Traffic.replaying(trace)
    assert recorded.rate == pytest.approx(1.5)  # 3 gaps over 2 s
    assert (recorded.input_len, recorded.output_len, recorded.num_requests) == (152, 10, 4)
    assert recorded.max_len == 307
    assert requests(recorded) == trace
    doubled = requests(replace(recorded, rate=3.0))
    assert [r.arrival for r in doubled] == pytest.approx([0.0, 0.05, 0.1, 1.0])
    assert [(r.prompt_len, r.output_len) for r in doubled] == [(r.prompt_len, r.output_len) for r in trace]
    with pytest.raises(UsageError, match="at least two requests"):
        Traffic.replaying(trace[:1])
    with pytest.raises(UsageError, match="open loop"):
        Traffic(concurrency=4, trace=tuple(trace))


# Published datapoints (REFERENCE.md, AIConfigurator systems/silicon_sample.csv): closed loop,
# every client starting at once, 6 requests per client. Each is simulated with its engine's
# default scheduling: TRT-LLM's max_num_tokens 8192 without context chunking (a prompt that does
# not fit beside the step's decodes waits a step), vLLM V1's chunked prefill at 2048.
DATAPOINTS = [
    # model, gpu, quant, tp, in, out, concurrency, budget, TTFT ms, TPOT ms, check TTFT
    (LLAMA_8B, H100, "bf16", 1, 1024, 128, 8, 8192, 191, 7.9, True),
    (LLAMA_8B, H100, "bf16", 1, 1024, 128, 32, 8192, 128, 13.2, False),
    (LLAMA_70B, H200, "fp8", 1, 1024, 1024, 4, 2048, 203, 21.5, True),
    (LLAMA_70B, H200, "fp8", 4, 1024, 1024, 8, 2048, 101, 10.1, True),
    (LLAMA_70B, H200, "fp8", 4, 1024, 1024, 64, 2048, 265, 16.1, True),
]


def test_published_datapoints_within_25_percent():
    rows = []
    for model, g, quant, tp, n_in, n_out, c, budget, ttft, tpot, check_ttft in DATAPOINTS:
        chunked = budget == 2048  # vLLM V1; the 8192 rows are TRT-LLM's
        rep = replica(
            model, g, quant, tp, budget, max_num_seqs=256, eff=Efficiency(), enable_chunked_prefill=chunked
        )
        reqs = requests(Traffic(input_len=n_in, output_len=n_out, concurrency=c, num_requests=6 * c))
        res = simulate(rep, reqs, concurrency=c)
        got_ttft, got_tpot = 1000 * res.ttft_s.mean(), 1000 * res.tpot_s.mean()
        rows.append((model.name, g.name, tp, c, got_ttft, ttft, got_tpot, tpot))
        assert got_tpot == pytest.approx(tpot, rel=0.25), rows[-1]
        if check_ttft:
            assert got_ttft == pytest.approx(ttft, rel=0.25), rows[-1]
    print("\nmodel, gpu, tp, c: TTFT predicted/published, TPOT predicted/published")
    for name, g, tp, c, pt, t, pp, p in rows:
        print(
            f"{name} {g} TP{tp} c={c}: TTFT {pt:.0f}/{t} ms ({pt / t:.2f}), TPOT {pp:.2f}/{p} ms ({pp / p:.2f})"
        )
