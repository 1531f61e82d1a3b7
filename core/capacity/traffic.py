"""Traffic: the requests a plan is simulated on, as arrival times and token counts.

Open loop (Poisson arrivals at `rate`) is what a deployment sees and what capacity is
planned for; closed loop (`concurrency` requests always in flight) is how most published
benchmarks are run, so the published datapoints are checked in that mode. A recorded
`llmtool bench --json` run can be replayed request for request (calibration does), or
time-scaled to another rate: its bursts and lengths kept, its intensity changed.

Not here: running anything. Lengths are token counts only; the simulator makes up ids.
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import UsageError

LENGTH_DISTS = ("fixed", "uniform", "exponential")


@dataclass(frozen=True)
class SimRequest:
    arrival: float  # seconds from the start; ignored in closed loop (arrives when a slot frees)
    prompt_len: int  # tokens, the shared prefix included
    output_len: int  # tokens generated (EOS ignored, as benchmarks do)
    prefix_len: int = 0  # leading prompt tokens shared by every request (a system prompt)


@dataclass(frozen=True)
class Traffic:
    input_len: int = 1024  # mean prompt tokens
    output_len: int = 128  # mean output tokens
    length_dist: str = "fixed"  # fixed | uniform (len x (1 +- len_range)) | exponential (mean len)
    len_range: float = 0.5  # half-width of the uniform distribution, as a share of the mean
    prefix_share: float = 0.0  # share of each prompt that is a prefix common to all requests
    rate: float | None = None  # requests/s, Poisson; None with concurrency
    concurrency: int | None = None  # closed loop: requests in flight
    num_requests: int = 400
    seed: int = 0
    # A recorded run to replay instead of drawing requests: its arrivals are time-scaled to
    # `rate`, its lengths kept (the fields above then describe it: see `replaying`).
    trace: tuple[SimRequest, ...] = ()

    @classmethod
    def replaying(cls, trace: list[SimRequest], rate: float | None = None) -> "Traffic":
        """Traffic that replays `trace` at `rate` (default: the rate it was recorded at)."""
        if len(trace) < 2 or trace[-1].arrival <= trace[0].arrival:
            raise UsageError("a replayed run needs at least two requests sent at different times")
        return cls(
            input_len=round(float(np.mean([r.prompt_len for r in trace]))),
            output_len=round(float(np.mean([r.output_len for r in trace]))),
            rate=trace_rate(trace) if rate is None else rate,  # Traffic checks it
            num_requests=len(trace),
            trace=tuple(trace),
        )

    def __post_init__(self):
        if self.trace and self.rate is None:
            raise UsageError("a replayed run is open loop: it needs a rate, not a concurrency")
        if (self.rate is None) == (self.concurrency is None):
            raise UsageError("traffic needs exactly one of a rate (open loop) or a concurrency (closed loop)")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise UsageError(f"the request rate must be a positive number, got {self.rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {self.concurrency}")
        if min(self.input_len, self.output_len, self.num_requests) < 1:
            raise UsageError("input length, output length and number of requests must be at least 1")
        if self.length_dist not in LENGTH_DISTS:
            raise UsageError(
                f"unknown length distribution '{self.length_dist}': valid are {', '.join(LENGTH_DISTS)}"
            )
        if not 0 <= self.len_range < 1:
            raise UsageError(f"len_range must be in [0, 1), got {self.len_range}")
        if not 0 <= self.prefix_share < 1:
            raise UsageError(f"prefix share must be in [0, 1), got {self.prefix_share}")

    @property
    def max_len(self) -> int:
        """Longest prompt + output a request may have: what the KV cache must hold for one."""
        if self.trace:
            return max(r.prompt_len + r.output_len for r in self.trace)
        if self.length_dist == "uniform":
            grow = 1 + self.len_range
            return math.floor(self.input_len * grow) + math.floor(self.output_len * grow)
        if self.length_dist == "exponential":
            return 4 * (self.input_len + self.output_len)  # the cap _lengths applies
        return self.input_len + self.output_len


def requests(traffic: Traffic) -> list[SimRequest]:
    if traffic.trace:
        # Time-scaled: every gap shrinks or grows by one factor, so the run's bursts stay.
        scale = trace_rate(traffic.trace) / traffic.rate
        t0 = traffic.trace[0].arrival
        return [replace(r, arrival=(r.arrival - t0) * scale) for r in traffic.trace]
    rng = np.random.default_rng(traffic.seed)
    n = traffic.num_requests
    prompts = _lengths(rng, traffic.input_len, n, traffic)
    outputs = _lengths(rng, traffic.output_len, n, traffic)
    prefix = int(traffic.input_len * traffic.prefix_share)
    if traffic.rate is None:
        arrivals = np.zeros(n)
    else:
        arrivals = np.cumsum(rng.exponential(1 / traffic.rate, n))
        arrivals -= arrivals[0]  # the first request opens the run
    return [
        SimRequest(float(a), int(max(p, prefix + 1)), int(o), prefix)
        for a, p, o in zip(arrivals, prompts, outputs, strict=True)
    ]


def trace_rate(trace: tuple[SimRequest, ...] | list[SimRequest]) -> float:
    """Requests per second of a recorded run: n - 1 gaps over its span of send times."""
    return (len(trace) - 1) / (trace[-1].arrival - trace[0].arrival)


def from_bench(records: list[dict]) -> list[SimRequest]:
    """Replay the completed requests of an `llmtool bench --json` run: their scheduled send
    times and the token counts the server reported (usage)."""
    out = []
    for r in records:
        if r.get("error") or r.get("first_token") is None:
            continue
        prompt = r.get("prompt_tokens") or r.get("prompt_len")
        output = r.get("output_tokens") or r.get("client_output_tokens") or sum(r.get("chunk_tokens") or [])
        if not prompt or not output:
            continue
        out.append(SimRequest(float(r["scheduled"]), int(prompt), int(output)))
    if not out:
        raise UsageError("the bench results hold no completed request with token counts to replay")
    out.sort(key=lambda s: s.arrival)
    t0 = out[0].arrival
    return [SimRequest(s.arrival - t0, s.prompt_len, s.output_len) for s in out]


def _lengths(rng: np.random.Generator, mean: int, n: int, traffic: Traffic) -> np.ndarray:
    if traffic.length_dist == "uniform":
        lo, hi = mean * (1 - traffic.len_range), mean * (1 + traffic.len_range)
        return np.maximum(1, np.floor(rng.uniform(lo, hi + 1, n))).astype(int)
    if traffic.length_dist == "exponential":
        # Capped at 4x the mean (the 2% tail beyond) so one request cannot outgrow the cache.
        return np.clip(np.round(rng.exponential(mean, n)), 1, 4 * mean).astype(int)
    return np.full(n, mean, dtype=int)
