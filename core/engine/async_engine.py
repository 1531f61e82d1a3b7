"""AsyncEngine: the Engine driven by one background thread, for asyncio callers (the server).

The Engine is not thread-safe, so only the loop thread ever calls it: callers hand it
work (add, abort) through an inbox and get each request's deltas back through their own
asyncio.Queue, fed with loop.call_soon_threadsafe. The event loop never waits on a step.
This is not a scheduler: batching and admission stay in Engine and Scheduler;
`max_pending` only bounds how many requests may be unfinished at once (the server's 429).
"""

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from ..errors import LlmtoolError, UsageError
from .engine import Engine, EngineStats, RequestOutput
from .sampling_params import SamplingParams
from .sequence import Sequence

T = TypeVar("T")


def build_off_main_thread(factory: Callable[[], T]) -> T:
    """Run `factory` (e.g. building an Engine) in a short-lived thread and return its result.

    Why: torch's OpenMP (libgomp) gives each thread that runs a parallel region a team of
    workers; while more such threads exist than CPUs it throttles the workers' spin-wait, so
    every op pays a futex wake-up. An Engine built (weights converted, packed, warmed) on the
    main thread leaves the main thread's team alive for good, and the AsyncEngine loop
    thread's steps then run 2x slower on 2 cores (measured: 48 vs 24 ms per decode step).
    Built in a thread that ends, the loop thread's team is the only one."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = factory()
        except BaseException as e:  # re-raised in the caller
            result["error"] = e

    thread = threading.Thread(target=run, name="llmtool-build")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class QueueFullError(LlmtoolError):
    """max_pending requests are already unfinished; try again later (HTTP 429)."""


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (a step raised, or shutdown); no request can finish."""


@dataclass(frozen=True)
class AsyncEngineStats(EngineStats):
    num_pending: int = 0  # requests given to generate() and not yet finished or aborted


@dataclass(eq=False)
class _Stream:
    loop: asyncio.AbstractEventLoop  # the caller's loop: deltas must be queued on it
    queue: asyncio.Queue  # RequestOutput deltas, or one EngineDeadError that ends the stream
    seq: Sequence | None = None  # set by the loop thread once the engine accepted the request


class AsyncEngine:
    def __init__(self, engine: Engine, max_pending: int | None = None):
        if max_pending is not None and max_pending < 1:
            raise UsageError("max_pending must be at least 1")
        self.engine = engine
        self.max_pending = max_pending
        self.thread: threading.Thread | None = None
        # Guards the fields below. Held only for dict/list updates, never during a step,
        # so the event loop can take it without waiting on the model.
        self._cond = threading.Condition()
        self._inbox: list[tuple[Callable[[], None], Future]] = []
        self._streams: dict[str, _Stream] = {}
        self._is_stopping = False
        self._dead: tuple[str, BaseException | None] | None = None  # why, and what raised
        # Written only by the loop thread; replacing a reference is atomic, so stats() reads it lock-free.
        self._snapshot = engine.stats()

    def start(self) -> "AsyncEngine":
        with self._cond:
            if self.thread is not None:
                raise RuntimeError("this AsyncEngine was already started")
            # Daemon: a forgotten shutdown() must not keep the process alive.
            self.thread = threading.Thread(target=self._run, name="llmtool-engine-loop", daemon=True)
        self.thread.start()
        return self

    async def shutdown(self) -> None:
        """Stop the loop: in-flight requests are aborted and their iterators raise EngineDeadError."""
        with self._cond:
            self._is_stopping = True
            self._cond.notify()
        if self.thread is None:
            self._fail_all("the engine was shut down", None)
        else:
            await asyncio.to_thread(self.thread.join)  # a step in progress finishes first

    async def __aenter__(self) -> "AsyncEngine":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    @property
    def dead_reason(self) -> str | None:
        """Why the loop stopped (a step raised, or shutdown); None while it serves."""
        dead = self._dead
        return None if dead is None else dead[0]

    def stats(self) -> AsyncEngineStats:
        with self._cond:
            num_pending = len(self._streams)
        return AsyncEngineStats(**vars(self._snapshot), num_pending=num_pending)

    async def add(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> "RequestStream":
        """Admit a request and return its stream of deltas once the engine has accepted it, so
        a full queue (QueueFullError) or a bad request (UsageError) raises here, before a
        server commits to a response. The caller must close the stream (or use `async with`)."""
        rid = request_id if request_id is not None else f"req-{uuid.uuid4().hex}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._cond:
            if self._dead is not None:
                raise self._dead_error()
            if self.thread is None:
                raise RuntimeError("call start() before add()")
            if rid in self._streams:
                raise UsageError(f"request id '{rid}' is already in use")
            if self.max_pending is not None and len(self._streams) >= self.max_pending:
                raise QueueFullError(f"{len(self._streams)} requests are already pending; try again later")
            self._streams[rid] = stream
        handle = RequestStream(self, rid, stream)
        try:
            # Awaiting the add makes add_request's own errors (a too-long prompt) raise here.
            await asyncio.wrap_future(self._submit(lambda: self._add(rid, prompt, params, stream)))
        except BaseException:
            handle.close()  # cancelled while waiting: the add may still land, so abort it
            raise
        return handle

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's deltas until the finished one. Leaving early (break + aclose,
        cancellation, client gone) aborts the request in the engine."""
        async with await self.add(prompt, params, request_id) as stream:
            async for out in stream:
                yield out

    async def abort(self, request_id: str) -> None:
        """Abort a request; its generate() ends with a finished delta whose finish_reason is 'abort'."""
        await asyncio.wrap_future(self._submit(lambda: self._abort(request_id, None)))

    # ---- the loop thread -----------------------------------------------------------------

    def _submit(self, fn: Callable[[], None]) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._dead is not None:
                fut.set_exception(self._dead_error())
            else:
                self._inbox.append((fn, fut))
                self._cond.notify()  # wakes a sleeping loop at once
        return fut

    def _run(self) -> None:
        taken: list[tuple[Callable[[], None], Future]] = []  # out of the inbox, not yet answered
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._is_stopping or self.engine.has_unfinished()):
                        self._cond.wait()  # sleep, not spin, while there is nothing to do
                    if self._is_stopping:
                        break
                    taken, self._inbox = self._inbox, []
                replies = [(fut, self._call(fn)) for fn, fut in taken if fut.set_running_or_notify_cancel()]
                outputs = self.engine.step() if self.engine.has_unfinished() else []
                for out in outputs:
                    if out.finished:
                        self.engine.release(out.request_id)  # else the Engine keeps it forever
                # Snapshot before replying, so whoever sees a result sees stats that include it.
                self._snapshot = self.engine.stats()
                for fut, error in replies:
                    fut.set_result(None) if error is None else fut.set_exception(error)
                taken = []
                self._deliver(outputs)
            with self._cond:
                rids = list(self._streams)
            for rid in rids:
                self.engine.abort(rid)  # free their blocks: the Engine may outlive us
            self._snapshot = self.engine.stats()
            self._fail_all("the engine was shut down", None)
        except BaseException as e:  # any failure must reach the waiting callers, or they hang
            self._fail_all(f"the engine loop failed: {e!r}", e, tuple(fut for _, fut in taken))

    @staticmethod
    def _call(fn: Callable[[], None]) -> BaseException | None:
        try:
            fn()
        except BaseException as e:  # the caller's error (e.g. UsageError), not the engine's
            return e
        return None

    def _add(self, rid: str, prompt: str | list[int], params: SamplingParams, stream: _Stream) -> None:
        try:
            stream.seq = self.engine.add_request(rid, prompt, params)
        except BaseException:
            with self._cond:
                self._streams.pop(rid, None)
            raise

    def _abort(self, rid: str, stream: _Stream | None) -> None:
        with self._cond:
            current = self._streams.get(rid)
            # A stream only aborts itself: its request may have finished and the id been reused.
            if current is None or (stream is not None and current is not stream):
                return
            del self._streams[rid]
        self.engine.abort(rid)
        seq = current.seq
        if stream is None and seq is not None:  # aborted from outside: tell its consumer
            counts = (seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens)
            self._put(current, RequestOutput(rid, [], "", True, "abort", *counts))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        with self._cond:
            targets = [(self._streams.get(o.request_id), o) for o in outputs]
            for out in outputs:
                if out.finished:
                    self._streams.pop(out.request_id, None)
        # One wake-up per event loop per step, not one per request: each call_soon_threadsafe
        # writes the loop's self-pipe, and a server has every stream on the same loop.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        for stream, out in targets:
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream, out))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # that event loop is closed: nobody will read these
                for stream, out in batch:
                    if not out.finished:
                        self._abort(out.request_id, stream)
                self._snapshot = self.engine.stats()

    @staticmethod
    def _put(stream: _Stream, item: object) -> bool:
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
            return True
        except RuntimeError:  # the caller's event loop is closed
            return False

    def _fail_all(self, reason: str, cause: BaseException | None, running: tuple[Future, ...] = ()) -> None:
        with self._cond:
            self._dead = self._dead or (reason, cause)
            streams, self._streams = self._streams, {}
            inbox, self._inbox = self._inbox, []
        for stream in streams.values():
            self._put(stream, self._dead_error())  # one instance each: tracebacks must not pile up
        unanswered = [f for _, f in inbox if f.set_running_or_notify_cancel()]
        for fut in unanswered + [f for f in running if f.running()]:
            fut.set_exception(self._dead_error())

    def _dead_error(self) -> EngineDeadError:
        reason, cause = self._dead
        error = EngineDeadError(reason)
        error.__cause__ = cause
        return error


def _put_all(batch: list[tuple["_Stream", RequestOutput]]) -> None:
    for stream, out in batch:
        stream.queue.put_nowait(out)


class RequestStream:
    """One admitted request's deltas, ending with the finished one (or EngineDeadError).
    close() before the end aborts the request in the engine and frees its blocks."""

    def __init__(self, engine: AsyncEngine, request_id: str, stream: _Stream):
        self.request_id = request_id
        self._engine = engine
        self._stream = stream
        self._done = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._stream.queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.finished
        return item

    def close(self) -> None:
        """Abort the request unless it has ended; fire and forget, so it is safe in a finally
        of a cancelled task or a closing generator, which must not await."""
        if not self._done:
            self._done = True
            self._engine._submit(lambda: self._engine._abort(self.request_id, self._stream))

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
