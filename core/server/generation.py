"""Generation: the engine requests behind one HTTP request, n samples of each prompt.

It admits every choice before the response starts (so a full queue is a 429, never a broken
stream), merges the choices' deltas in arrival order, enforces the per-request deadline,
aborts whatever is left when the caller stops reading (client gone, error, timeout), and
records each choice in the metrics as it ends. Completions and chat build on it.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..engine.async_engine import AsyncEngine, RequestStream
from ..engine.engine import RequestOutput
from ..engine.sampling_params import SamplingParams
from .metrics import ServerMetrics
from .protocol import choice_params


class GenerationTimeout(Exception):
    """The request ran past --request-timeout; whatever was left of it is aborted."""


@dataclass
class Choice:
    """One sample's accumulated result; index = prompt index x n + sample index."""

    index: int
    prompt_index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list = field(default_factory=list)  # TokenLogprobs per token, when asked for
    prompt_logprobs: list | None = None  # per prompt token (None first), when asked for
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    token_times: list[float] = field(default_factory=list)  # time.monotonic() per token

    def add(self, out: RequestOutput, now: float) -> None:
        self.token_ids += out.new_token_ids
        self.text += out.new_text
        if out.new_logprobs:
            self.logprobs += out.new_logprobs
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        self.token_times += [now] * len(out.new_token_ids)
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if out.finished:
            self.finish_reason = out.finish_reason
            self.error = out.error


async def _pump(index: int, stream: RequestStream, queue: asyncio.Queue) -> None:
    """Feed one choice's deltas into the merged queue of a request with several choices."""
    try:
        async for out in stream:
            queue.put_nowait((index, out))
    except Exception as e:  # EngineDeadError: the consumer raises it
        queue.put_nowait((index, e))


class Generation:
    def __init__(
        self,
        streams: list[RequestStream],
        choices: list[Choice],
        start: float,
        deadline: float | None,
        metrics: ServerMetrics,
    ):
        self.streams = streams
        self.choices = choices
        self.start = start  # time.monotonic() when the HTTP request arrived
        self.deadline = deadline
        self.metrics = metrics
        self._observed: set[int] = set()

    @classmethod
    async def start_all(
        cls,
        engine: AsyncEngine,
        prompts: list[list[int]],
        params: list[SamplingParams],
        n: int,
        request_id: str,
        metrics: ServerMetrics,
        start: float,
        timeout: float | None = None,
    ) -> "Generation":
        """Admit n choices per prompt; QueueFullError or UsageError leave nothing admitted."""
        streams: list[RequestStream] = []
        choices: list[Choice] = []
        try:
            for p, (ids, prompt_params) in enumerate(zip(prompts, params, strict=True)):
                for sample_params in choice_params(prompt_params, n):
                    index = len(choices)
                    streams.append(await engine.add(ids, sample_params, f"{request_id}-{index}"))
                    choices.append(Choice(index, p, num_prompt_tokens=len(ids)))
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        deadline = None if timeout is None else start + timeout
        return cls(streams, choices, start, deadline, metrics)

    async def events(self) -> AsyncIterator[tuple[Choice, RequestOutput]]:
        """Each delta as it comes, with its (already updated) Choice, until every choice has
        finished. Raises GenerationTimeout past the deadline and EngineDeadError if the
        engine stops. Closing the iterator early aborts the unfinished choices."""
        if len(self.streams) == 1:  # the common case: read the one stream, no pump task
            source = self.streams[0]
            indexed = None
        else:
            source = asyncio.Queue()
            indexed = [asyncio.create_task(_pump(i, s, source)) for i, s in enumerate(self.streams)]
        remaining = len(self.streams)
        try:
            while remaining:
                if indexed is None:
                    index, item = 0, await self._next(source.__anext__())
                else:
                    index, item = await self._next(source.get())
                if isinstance(item, BaseException):
                    raise item
                choice = self.choices[index]
                choice.add(item, time.monotonic())
                if item.finished:
                    remaining -= 1
                    self._observe(choice)
                yield choice, item
        finally:
            for task in indexed or ():
                task.cancel()
            for stream in self.streams:
                stream.close()  # no-op for finished ones
            for choice in self.choices:
                if choice.index not in self._observed:
                    choice.finish_reason = choice.finish_reason or "abort"
                    self._observe(choice)

    async def run(self) -> list[Choice]:
        """Wait for every choice to finish (non-streaming responses)."""
        async for _ in self.events():
            pass
        return self.choices

    async def _next(self, awaitable):
        if self.deadline is None:
            return await awaitable
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(awaitable, left)
        except TimeoutError:
            raise GenerationTimeout(
                f"the request did not finish within the server's timeout of {self.deadline - self.start:g} s"
            ) from None

    def _observe(self, choice: Choice) -> None:
        self._observed.add(choice.index)
        times = choice.token_times
        self.metrics.observe_request(
            num_prompt_tokens=choice.num_prompt_tokens,
            num_generation_tokens=len(choice.token_ids),
            e2e_latency=time.monotonic() - self.start,
            ttft=times[0] - self.start if times else None,
            inter_token_latencies=inter_token_latencies(times),
            finished_reason=choice.finish_reason,
        )


def inter_token_latencies(times: list[float]) -> list[float]:
    """One gap per token after the first chunk. A step that verified k speculated tokens stamps
    them all at once; its gap is split over them (gap / k each), as `llmtool bench` counts ITL."""
    gaps: list[float] = []
    i = next((n for n, t in enumerate(times) if t != times[0]), len(times))  # past the first chunk
    while i < len(times):
        j = i
        while j + 1 < len(times) and times[j + 1] == times[i]:
            j += 1
        k = j - i + 1
        gaps += [(times[i] - times[i - 1]) / k] * k
        i = j + 1
    return gaps
