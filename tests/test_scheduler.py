"""The Scheduler alone (no model, no torch): budgets, FCFS admission, preemption, starvation."""

import random

from llmtool.core.engine.block_manager import BlockManager
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.engine.scheduler import Scheduler, SchedulerConfig
from llmtool.core.engine.sequence import Sequence


def _run_step(sched: Scheduler, first_scheduled: dict[str, int], step: int) -> None:
    out = sched.schedule()
    cfg = sched.config
    assert out.num_batched_tokens <= cfg.max_num_batched_tokens
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len({id(e.seq) for e in out.scheduled}) == len(out.scheduled), "a sequence scheduled twice"
    for e in out.scheduled:
        assert e.num_new_tokens >= 1
        assert len(e.seq.block_table) * sched.block_manager.block_size >= e.start + e.num_new_tokens
        first_scheduled.setdefault(e.seq.request_id, step)
    sched.update(out, [7 if e.samples else None for e in out.scheduled])


def test_no_starvation_under_a_stream_of_long_and_short_requests():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=96, block_size=16)  # 1,536 tokens: long prompts contend hard
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=1536), bm)
    arrivals, first_scheduled, finished_at = [], {}, {}
    for step in range(4000):
        if step < 300 and step % 3 == 0:  # a steady stream for 300 steps, then it drains
            rid = f"r{len(arrivals)}"
            n = rng.choice([600, 12, 12, 450, 8, 30])
            seq = Sequence(
                rid, [rng.randrange(100) for _ in range(n)], SamplingParams(max_tokens=rng.choice([4, 40]))
            )
            sched.add(seq)
            arrivals.append(seq)
        _run_step(sched, first_scheduled, step)
        for seq in arrivals:
            if seq.is_finished and seq.request_id not in finished_at:
                finished_at[seq.request_id] = step
        if step > 300 and not sched.has_unfinished():
            break
    assert len(finished_at) == len(arrivals), "some request never finished"
    order = sorted(first_scheduled, key=lambda rid: (first_scheduled[rid], int(rid[1:])))
    assert order == [s.request_id for s in arrivals], "admission was not first-come first-served"
    assert all(s.num_output_tokens == s.params.max_tokens for s in arrivals)
    assert bm.num_used_blocks == 0


def test_preemption_evicts_the_newest_and_requeues_it_first():
    bm = BlockManager(num_blocks=6, block_size=4)  # 24 token slots
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=24), bm)
    seqs = [Sequence(f"s{i}", [1, 2, 3, 4, 5, 6, 7], SamplingParams(max_tokens=12)) for i in range(3)]
    for s in seqs:
        sched.add(s)
    preempted = []
    for _ in range(40):
        out = sched.schedule()
        preempted += [s.request_id for s in out.preempted]
        sched.update(out, [9 if e.samples else None for e in out.scheduled])
        if not sched.has_unfinished():
            break
    assert preempted and preempted[0] == "s2", preempted
    assert all(s.is_finished and s.num_output_tokens == 12 for s in seqs)
    assert sched.num_preemptions == len(preempted)


def test_chunked_prefill_shares_a_step_with_decodes():
    bm = BlockManager(num_blocks=64, block_size=16)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=1024), bm)
    short = Sequence("short", [1] * 5, SamplingParams(max_tokens=50))
    sched.add(short)
    sched.update(sched.schedule(), [3])  # short is now decoding
    long = Sequence("long", [2] * 100, SamplingParams(max_tokens=5))
    sched.add(long)
    out = sched.schedule()
    assert [(e.seq.request_id, e.num_new_tokens) for e in out.scheduled] == [("short", 1), ("long", 31)]
    assert not out.scheduled[1].samples
