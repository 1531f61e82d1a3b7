"""RequestRecord: what the client saw of one request, the raw material of every metric.

Times are seconds on one monotonic clock (time.perf_counter) relative to the run's start
(t0), so records from any target (HTTP or in-process) compare directly. A request is
timed from its SCHEDULED send time: a client that falls behind still charges the delay to
the server's latency (no coordinated omission); `sent` records when it actually went out.
"""

from dataclasses import asdict, dataclass, field


@dataclass
class RequestRecord:
    index: int  # position in the workload
    scheduled: float  # when the arrival process wanted it sent
    prompt_len: int | None = None  # client-side token count of the prompt (the workload's)
    sent: float | None = None  # when the request actually went out
    first_token: float | None = None  # first chunk carrying text (a role-only chunk does not count)
    end: float | None = None  # last chunk carrying text
    chunk_times: list[float] = field(default_factory=list)  # arrival of every chunk carrying text
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each such chunk
    output_text_len: int = 0  # characters received
    output_text: str | None = field(default=None, repr=False)  # for the token cross-check; not in to_dict
    prompt_tokens: int | None = None  # server usage.prompt_tokens
    output_tokens: int | None = None  # server usage.completion_tokens (the count metrics use)
    client_output_tokens: int | None = None  # client tokenizer's count of the text: cross-check only
    # kind: "http_<status>", "timeout", "disconnect", "connect", "invalid", "stream_error" (an error
    # event mid-stream), "no_output" (ended cleanly without text), or the engine target's own
    error: str | None = None
    error_detail: str | None = None  # the first line of what went wrong

    @property
    def ok(self) -> bool:
        return self.error is None and self.first_token is not None

    @property
    def num_output_tokens(self) -> int:
        """Server usage when given, else the client tokenizer's count, else one per chunk."""
        if self.output_tokens is not None:
            return self.output_tokens
        if self.client_output_tokens is not None:
            return self.client_output_tokens
        return sum(self.chunk_tokens)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.scheduled

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.scheduled

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output_tokens - 1), for requests with more than one output token."""
        n = self.num_output_tokens
        if self.e2e is None or self.ttft is None or n < 2:
            return None
        return (self.e2e - self.ttft) / (n - 1)

    def itl(self) -> list[float]:
        """Inter-token latencies: every gap between consecutive text chunks; a chunk carrying
        k tokens contributes k gaps of gap / k (speculative decoding sends several at once)."""
        gaps: list[float] = []
        for prev, now, k in zip(self.chunk_times, self.chunk_times[1:], self.chunk_tokens[1:], strict=False):
            k = max(k, 1)
            gaps += [(now - prev) / k] * k
        return gaps

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["output_text"]  # results files keep timings and counts, not every generated text
        return out
