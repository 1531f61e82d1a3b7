"""Arrival schedules and the run loop of `llmtool bench`: WHEN each request goes out, for any
target. Not here: how a request is sent and timed (the targets: http_client.py,
engine_target.py) or what the records mean (metrics.py).

The target protocol. A target is any callable

    async def target(index: int, scheduled: float, t0: float) -> RequestRecord

that sends workload item `index` NOW and returns its record: `scheduled` copied in, `sent`
and every chunk time on time.perf_counter() minus `t0` (the run's start, also from
perf_counter). It never raises for a failed request (the record's `error` says what kind),
but lets asyncio.CancelledError through: that is how an aborted run stops it. Bind the
workload with a closure, e.g.
    lambda i, s, t0: client.send(i, prompts[i], output_lens[i], s, t0)
Indices count from 0 in send order. The first `warmup` requests are part of the same run
(same loop, same schedule, same t0) but are left out of the records: the measured requests
then start in the steady state the warm-up reached, not in a burst of N simultaneous sends
whose client-side cost (several ms at concurrency 100, even for http_client's lean sends)
would all be charged to TTFT. A workload of warmup + num_requests items has no prompt twice (no
prefix-cache flattery); a duration-bound run has no known end, so a target should cycle
(`prompts[i % len(prompts)]`).

Two loops:
- closed (`concurrency`): N workers, each sending its next request the moment its previous
  one ends; a request's scheduled time is when a worker picks it up.
- open (`rate`): send times drawn up front from a seeded generator (gamma gaps, see
  arrival_times); each request goes out at its time even if earlier ones are still running,
  so a slow server cannot slow the arrivals down (no coordinated omission). With
  max_concurrency a request may wait for a slot: it is still timed from its scheduled time,
  and `sent` shows the wait.
"""

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import UsageError
from .records import RequestRecord

_BATCH = 1024  # gaps drawn per generator call: fixed, so a seed means one schedule
_SPIN = 0.002  # the last stretch before a send time is spun, not slept: epoll rounds timers up to 1 ms

Progress = Callable[[int, int | None], None]  # (measured requests done, total or None when duration-bound)


class Target(Protocol):
    def __call__(self, index: int, scheduled: float, t0: float) -> Awaitable[RequestRecord]: ...


@dataclass(frozen=True)
class LoadConfig:
    num_requests: int | None = None  # measured requests; None: as many as `duration` allows
    duration: float | None = None  # seconds after t0 (warm-up included) past which no request is sent
    concurrency: int | None = None  # closed loop: requests in flight, always
    rate: float | None = None  # open loop: mean requests/s; math.inf sends all at t=0
    burstiness: float = 1.0  # gamma shape of the gaps: 1 Poisson, < 1 burstier, > 1 smoother, inf constant
    max_concurrency: int | None = None  # open loop: at most this many in flight (others wait for a slot)
    warmup: int = 0  # the run's first requests, sent like the rest but left out of the records
    seed: int = 0  # the open loop's schedule

    def __post_init__(self):
        if (self.concurrency is None) == (self.rate is None):
            raise UsageError("give exactly one of a concurrency (closed loop) and a rate (open loop)")
        if self.num_requests is None and self.duration is None:
            raise UsageError("give a number of requests, a duration, or both")
        checks = [
            (self.num_requests, 1, "number of requests"),
            (self.concurrency, 1, "concurrency"),
            (self.max_concurrency, 1, "max concurrency"),
        ]
        for value, low, name in checks:
            if value is not None and value < low:
                raise UsageError(f"{name} must be >= {low}, not {value}")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"duration must be > 0 seconds, not {self.duration}")
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"rate must be > 0 requests/s, not {self.rate}")
        if self.rate == math.inf and self.num_requests is None:
            raise UsageError("an infinite rate needs a number of requests (a duration cannot bound it)")
        if not self.burstiness > 0:
            raise UsageError(f"burstiness must be > 0, not {self.burstiness}")
        if self.max_concurrency is not None and self.rate is None:
            raise UsageError("max concurrency caps an open loop (--rate); a closed loop has its concurrency")
        if self.warmup < 0:
            raise UsageError(f"warm-up must be >= 0 requests, not {self.warmup}")

    @property
    def is_open_loop(self) -> bool:
        return self.rate is not None


@dataclass(frozen=True)
class LoadResult:
    records: list[RequestRecord]  # measured requests that ended (failed ones included), by index
    aborted: bool  # cancelled or interrupted: `records` is what had finished by then
    num_cancelled: int  # requests dispatched but unfinished when the run was aborted
    num_warmup_failed: int  # warm-up requests that failed (all failing: the server is not serving)
    elapsed: float  # seconds from t0 until the loop returned (in-flight requests finish first)


def arrival_times(
    rate: float,
    burstiness: float = 1.0,
    seed: int = 0,
    *,
    num_requests: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Send times in seconds from t0, the first at 0: the first `num_requests`, and only those
    before `duration`. Gaps ~ Gamma(shape=k, scale=1/(k * rate)), mean 1/rate for every k:
    k = 1 is a Poisson process, smaller k clumps arrivals into bursts, k = inf spaces them
    evenly. rate = inf: everything at 0. The same arguments always give the same times."""
    if num_requests is None and duration is None:
        raise UsageError("a schedule needs a number of requests or a duration")
    if math.isinf(rate):
        if num_requests is None:
            raise UsageError("an infinite rate needs a number of requests")
        return np.zeros(num_requests)
    rng = np.random.default_rng(seed)
    parts, count, last = [np.zeros(1)], 1, 0.0
    while (num_requests is None or count < num_requests) and (duration is None or last < duration):
        if math.isinf(burstiness):
            gaps = np.full(_BATCH, 1.0 / rate)
        else:
            gaps = rng.gamma(shape=burstiness, scale=1.0 / (burstiness * rate), size=_BATCH)
        parts.append(last + np.cumsum(gaps))
        count, last = count + _BATCH, parts[-1][-1]
    times = np.concatenate(parts)[:num_requests]
    return times if duration is None else times[times < duration]


async def run_load(target: Target, config: LoadConfig, progress: Progress | None = None) -> LoadResult:
    """Run the workload; on cancellation (Ctrl-C under asyncio.run cancels the main task) stop
    every request in flight and return what had finished."""
    num_total = None if config.num_requests is None else config.warmup + config.num_requests
    times = None
    if config.is_open_loop:  # drawn before t0: the first request is due at t0 itself
        times = arrival_times(
            config.rate, config.burstiness, config.seed, num_requests=num_total, duration=config.duration
        )
    if progress is not None:
        progress(0, config.num_requests)
    run = _Run(target, config.warmup, progress, config.num_requests)
    aborted = False
    try:
        if times is not None:
            await _open_loop(run, times, config.max_concurrency)
        else:
            todo = itertools.count() if num_total is None else range(num_total)
            await _closed_loop(run, iter(todo), config.concurrency, config.duration)
    except (asyncio.CancelledError, KeyboardInterrupt):
        aborted = True
        await run.cancel()
    return LoadResult(
        records=sorted(run.records, key=lambda r: r.index),
        aborted=aborted,
        num_cancelled=run.num_dispatched - len(run.records) - len(run.warmup_records),
        num_warmup_failed=sum(not r.ok for r in run.warmup_records),
        elapsed=time.perf_counter() - run.t0,
    )


class _Run:
    """One run's clock, records and the tasks still running in it."""

    def __init__(self, target: Target, num_warmup: int, progress: Progress | None, total: int | None):
        self.target = target
        self.num_warmup = num_warmup
        self.progress = progress
        self.total = total
        self.t0 = time.perf_counter()
        self.records: list[RequestRecord] = []  # measured
        self.warmup_records: list[RequestRecord] = []
        self.tasks: set[asyncio.Task] = set()
        self.num_dispatched = 0

    async def request(self, index: int, scheduled: float, slots: asyncio.Semaphore | None = None) -> None:
        self.num_dispatched += 1
        if slots is None:
            record = await self.target(index, scheduled, self.t0)
        else:
            async with slots:
                record = await self.target(index, scheduled, self.t0)
        if index < self.num_warmup:
            self.warmup_records.append(record)
            return
        self.records.append(record)
        if self.progress is not None:
            self.progress(len(self.records), self.total)

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self) -> None:
        while self.tasks:
            done, _ = await asyncio.wait(set(self.tasks))
            for task in done:  # a target that raised is a bug in the target: surface it
                if not task.cancelled() and task.exception() is not None:
                    await self.cancel()
                    raise task.exception()

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _closed_loop(run: _Run, indices: Iterable[int], concurrency: int, duration: float | None) -> None:
    async def worker() -> None:
        for index in indices:  # one iterator shared by every worker: each takes the next index
            now = time.perf_counter() - run.t0
            if duration is not None and now >= duration:
                return
            await run.request(index, now)

    for _ in range(concurrency):
        run.spawn(worker())
    await run.join()


async def _open_loop(run: _Run, times: np.ndarray, max_concurrency: int | None) -> None:
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    for index, at in enumerate(times.tolist()):
        await _sleep_until(run.t0 + at)
        run.spawn(run.request(index, at, slots))
    await run.join()


async def _sleep_until(deadline: float) -> None:
    """Sleep to `deadline` (perf_counter), sub-millisecond: sleep most of the way, then yield
    to the loop (which keeps the streams in flight served) until the time has come."""
    delay = deadline - time.perf_counter()
    if delay > _SPIN:
        await asyncio.sleep(delay - _SPIN)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0)
