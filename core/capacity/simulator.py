"""Discrete-event simulation of one replica: the engine's real Scheduler and BlockManager
driven by a virtual clock and the step-time model (layer 3 of the planner).

Each iteration is one engine step, exactly as `Engine.step` runs it: admit what has
arrived, `Scheduler.schedule()` (continuous batching, chunked prefill, prefix cache,
preemption by recompute), then advance the clock by `step_time` of what was scheduled and
feed `Scheduler.update()` a made-up token per sampled row. Requests that arrive during a
step wait for the next one, as they do in the engine. Token times are step ends, which
is when a server streams them.

Not modelled: the network and client (benchmarks measure them, calibration absorbs them),
detokenization, and speculative decoding.
"""

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..engine.block_manager import BlockManager
from ..engine.sampling_params import SamplingParams
from ..engine.scheduler import Scheduler, SchedulerConfig
from ..engine.sequence import Sequence
from ..errors import UsageError
from .catalog import GPUSpec, ModelShape
from .step_time import Efficiency, StepBatch, step_time
from .traffic import SimRequest

WARMUP_SHARE = 0.1  # earliest requests left out of the statistics (the cache and batch fill up)
_PROMPT_ID_BASE = 1 << 40  # each request's own tokens live in its own id range: no false prefix hits


@dataclass(frozen=True)
class Replica:
    """One engine instance on a TP group, as the scheduler and the step-time model see it."""

    model: ModelShape
    gpu: GPUSpec
    quant: str = "bf16"
    tp: int = 1
    kv_dtype: str = "bf16"
    num_kv_blocks: int = 4096  # from the memory plan
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    eff: Efficiency = Efficiency()
    # vLLM V1 chunks prompts into the step budget; TRT-LLM by default does not (a prompt
    # that does not fit beside the step's decodes waits for the next step).
    enable_chunked_prefill: bool = True


@dataclass
class SimResult:
    ttft_s: np.ndarray  # per measured request
    tpot_s: np.ndarray  # per measured request; NaN where it made one token (no TPOT)
    e2e_s: np.ndarray
    output_tokens: int  # of measured requests
    duration_s: float  # first measured arrival to last measured finish
    num_steps: int
    num_preemptions: int
    mean_batch: float  # sequences per step, averaged over steps
    saturated: bool  # the queue kept growing: the rate is beyond what the replica serves
    step_mix: dict = field(default_factory=dict)  # share of steps that were decode-only / had prefill

    @property
    def throughput(self) -> float:
        """Output tokens per second of the measured requests."""
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, metric: str, p: float) -> float:
        values = {"ttft": self.ttft_s, "tpot": self.tpot_s, "e2e": self.e2e_s}[metric]
        values = values[~np.isnan(values)]
        if self.saturated or len(values) == 0:
            return math.inf
        return float(np.percentile(values, p))

    def share_within(self, bounds_s: dict[str, float]) -> float:
        """Share of measured requests whose own TTFT / TPOT / E2E are all within `bounds_s`
        (metric -> seconds): the request-level test behind goodput, as `llmtool bench` does it."""
        if self.saturated or len(self.e2e_s) == 0:
            return 0.0
        ok = np.ones(len(self.e2e_s), dtype=bool)
        for metric, bound in bounds_s.items():
            values = {"ttft": self.ttft_s, "tpot": self.tpot_s, "e2e": self.e2e_s}[metric]
            ok &= np.isnan(values) | (values <= bound)
        return float(ok.mean())


def simulate(
    replica: Replica,
    reqs: list[SimRequest],
    concurrency: int | None = None,
    warmup_share: float = WARMUP_SHARE,
) -> SimResult:
    """Serve `reqs` (open loop by their arrival times, or closed loop at `concurrency`)."""
    if not reqs:
        raise UsageError("nothing to simulate: no requests")
    max_len = max(r.prompt_len + r.output_len for r in reqs)
    capacity = replica.num_kv_blocks * replica.block_size
    if max_len > capacity:
        raise UsageError(f"a request of {max_len} tokens does not fit in the KV cache of {capacity} tokens")
    if not replica.enable_chunked_prefill and replica.max_num_batched_tokens <= max_len:
        raise UsageError(
            f"without chunked prefill the step budget ({replica.max_num_batched_tokens} tokens) must hold "
            f"the longest request ({max_len} tokens)"
        )
    block_manager = BlockManager(replica.num_kv_blocks, replica.block_size, replica.enable_prefix_caching)
    config = SchedulerConfig(
        max_num_seqs=replica.max_num_seqs,
        max_num_batched_tokens=replica.max_num_batched_tokens,
        max_model_len=max_len + 1,
        enable_chunked_prefill=replica.enable_chunked_prefill,
    )
    scheduler = Scheduler(config, block_manager)
    order = (
        sorted(range(len(reqs)), key=lambda i: reqs[i].arrival) if concurrency is None else range(len(reqs))
    )
    pending = deque(order)
    seqs: list[Sequence | None] = [None] * len(reqs)
    now, num_steps, batch_sum, decode_only = 0.0, 0, 0, 0
    saturate_at = max(256, 4 * replica.max_num_seqs)
    saturated = False

    def arrive(i: int, t: float) -> None:
        r = reqs[i]
        own = _PROMPT_ID_BASE * (i + 1)
        tokens = list(range(r.prefix_len)) + list(range(own, own + r.prompt_len - r.prefix_len))
        params = SamplingParams(max_tokens=r.output_len, ignore_eos=True, temperature=0.0)
        seq = Sequence(str(i), tokens, params, arrival_time=t)
        seqs[i] = seq
        scheduler.add(seq)

    if concurrency is not None:
        for _ in range(min(concurrency, len(pending))):
            arrive(pending.popleft(), 0.0)
    # Open loop: a queue that grows between the middle and the last arrival means requests
    # come faster than they are served; then no steady state exists to measure.
    half, waiting_at_half = len(reqs) // 2, None
    while pending or scheduler.has_unfinished():
        while concurrency is None and pending and reqs[pending[0]].arrival <= now:
            i = pending.popleft()
            arrive(i, reqs[i].arrival)
            if len(pending) == half:
                waiting_at_half = scheduler.num_waiting
            elif not pending and waiting_at_half is not None:
                if scheduler.num_waiting - waiting_at_half > max(8, 0.05 * len(reqs)):
                    saturated = True
        if saturated:
            break
        if not scheduler.has_unfinished():
            now = reqs[pending[0]].arrival  # idle until the next arrival
            continue
        if scheduler.num_waiting > saturate_at:
            saturated = True
            break
        out = scheduler.schedule()
        if out.is_empty:
            raise RuntimeError(
                "the scheduler scheduled nothing with work waiting: a request cannot be admitted"
            )
        batch = _step_batch(out)
        now += step_time(
            replica.model, replica.gpu, replica.quant, replica.tp, batch, replica.eff, replica.kv_dtype
        ).total_s
        num_steps += 1
        batch_sum += batch.num_seqs
        decode_only += not batch.prefill
        sampled = [_OUTPUT_TOKEN if entry.samples else None for entry in out.scheduled]
        for seq in scheduler.update(out, sampled):
            timing = seq.timing
            if timing.first_token is None:
                timing.first_token = now
            timing.token_times.append(now)
            if seq.is_finished:
                timing.finished = now
                if concurrency is not None and pending:
                    arrive(pending.popleft(), now)
    stats = (num_steps, batch_sum, decode_only, scheduler.num_preemptions, saturated)
    return _result(reqs, seqs, warmup_share, *stats)


_OUTPUT_TOKEN = -1  # generated tokens need no identity: ignore_eos, and no prefix shares them


def _step_batch(out) -> StepBatch:
    prefill, decode = [], []
    for entry in out.scheduled:
        if entry.num_new_tokens == 1:
            decode.append(entry.start)  # a one-token prompt tail costs what a decode does
        else:
            prefill.append((entry.num_new_tokens, entry.start))
    return StepBatch(prefill=tuple(prefill), decode_context=tuple(decode))


def _result(reqs, seqs, warmup_share, num_steps, batch_sum, decode_only, preemptions, saturated) -> SimResult:
    by_arrival = sorted(range(len(reqs)), key=lambda i: (seqs[i].timing.arrival if seqs[i] else math.inf, i))
    skip = int(len(reqs) * warmup_share) if len(reqs) >= 20 else 0
    measured = [
        seqs[i] for i in by_arrival[skip:] if seqs[i] is not None and seqs[i].timing.finished is not None
    ]
    ttft = np.array([s.timing.first_token - s.timing.arrival for s in measured])
    e2e = np.array([s.timing.finished - s.timing.arrival for s in measured])
    tpot = np.array(
        [
            (s.timing.finished - s.timing.first_token) / (s.num_output_tokens - 1)
            if s.num_output_tokens > 1
            else math.nan
            for s in measured
        ]
    )
    start = min((s.timing.arrival for s in measured), default=0.0)
    end = max((s.timing.finished for s in measured), default=0.0)
    return SimResult(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        output_tokens=sum(s.num_output_tokens for s in measured),
        duration_s=end - start,
        num_steps=num_steps,
        num_preemptions=preemptions,
        mean_batch=batch_sum / num_steps if num_steps else 0.0,
        saturated=saturated,
        step_mix={"decode_only": decode_only / num_steps if num_steps else 0.0},
    )
