"""AsyncEngine: concurrent streams give Engine.generate's tokens, a consumer that leaves aborts
its request, the pending bound, add errors, a failing step, and an idle loop that sleeps."""

import asyncio
import time

import pytest
import torch

from llmtool.core.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.errors import UsageError
from llmtool.core.models.loader import load_model

from .conftest import TINY_CASES, _save_tiny

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)  # outlives any check below
TIMEOUT = 10.0  # seconds: a bug must fail a test, not hang the suite


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    family, overrides = TINY_CASES["llama-gqa"]
    path = tmp_path_factory.mktemp("llama-gqa")
    _save_tiny(path, family, **overrides)
    return load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)


def _engine(loaded) -> Engine:
    return Engine(EngineConfig(kv_cache_memory=4096 * loaded.spec.kv_bytes_per_token(4)), loaded=loaded)


def _prompts(vocab: int, lens: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


async def _collect(aengine: AsyncEngine, prompt, params=GREEDY, request_id=None) -> list:
    return [out async for out in aengine.generate(prompt, params, request_id)]


async def _until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _spy(engine: Engine) -> list[tuple[float, list[str]]]:
    """Record each engine step: when it started and which requests got a token."""
    steps, real_step = [], engine.step

    def step():
        started = time.monotonic()
        outputs = real_step()
        steps.append((started, [o.request_id for o in outputs]))
        return outputs

    engine.step = step
    return steps


def _assert_idle_and_empty(aengine: AsyncEngine) -> None:
    s = aengine.stats()
    assert (s.num_pending, s.num_running, s.num_waiting, s.kv_cache_usage) == (0, 0, 0, 0.0), s


def test_concurrent_streams_match_engine_generate(loaded):
    prompts = _prompts(loaded.spec.vocab_size, [3, 17, 40, 9, 25])
    expected = [c.token_ids for c in _engine(loaded).generate(prompts, GREEDY)]

    async def main():
        async with AsyncEngine(_engine(loaded)) as aengine:
            streams = [_collect(aengine, p) for p in prompts]
            results = await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
            _assert_idle_and_empty(aengine)
        return results

    for deltas, tokens in zip(asyncio.run(main()), expected, strict=True):
        # Incremental: one delta per token, only the last one finished.
        assert len(deltas) == GREEDY.max_tokens > 1
        assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
        assert deltas[-1].finish_reason == "length"
        assert [t for d in deltas for t in d.new_token_ids] == tokens
        assert [d.num_output_tokens for d in deltas] == list(range(1, len(deltas) + 1))


def test_cancelled_consumer_aborts_and_others_finish(loaded):
    a, b = _prompts(loaded.spec.vocab_size, [20, 20], seed=1)

    engine = _engine(loaded)
    steps = _spy(engine)

    async def main():
        async with AsyncEngine(engine) as aengine:
            seen = asyncio.Event()

            async def consume_a():
                async for out in aengine.generate(a, LONG, "a"):
                    if out.num_output_tokens >= 2:
                        seen.set()

            task_a = asyncio.create_task(consume_a())
            task_b = asyncio.create_task(_collect(aengine, b, request_id="b"))
            await asyncio.wait_for(seen.wait(), TIMEOUT)
            task_a.cancel()  # what the server does when the client disconnects
            with pytest.raises(asyncio.CancelledError):
                await task_a
            deltas_b = await asyncio.wait_for(task_b, TIMEOUT)
            assert sum(len(d.new_token_ids) for d in deltas_b) == GREEDY.max_tokens
            await _until(lambda: aengine.stats().num_pending == 0)
            _assert_idle_and_empty(aengine)
        # a got a few tokens more while its cancellation reached the loop, not its 200.
        assert sum(ids.count("a") for _, ids in steps) < 10

    asyncio.run(main())


def test_break_and_aclose_aborts_and_generation_stops(loaded):
    (prompt,) = _prompts(loaded.spec.vocab_size, [10], seed=2)
    engine = _engine(loaded)
    steps = _spy(engine)

    async def main():
        async with AsyncEngine(engine) as aengine:
            stream = aengine.generate(prompt, LONG)
            async for out in stream:
                if out.num_output_tokens == 2:
                    break
            await stream.aclose()
            await _until(lambda: aengine.stats().num_pending == 0)
            _assert_idle_and_empty(aengine)
            num_steps = len(steps)
            await asyncio.sleep(0.1)
            assert len(steps) == num_steps, "the engine kept generating after the consumer left"
            assert num_steps < 10

    asyncio.run(main())


def test_queue_full_and_external_abort(loaded):
    a, b, c = _prompts(loaded.spec.vocab_size, [8, 8, 8], seed=3)

    async def main():
        async with AsyncEngine(_engine(loaded), max_pending=2) as aengine:
            tasks = [asyncio.create_task(_collect(aengine, p, LONG, rid)) for p, rid in [(a, "a"), (b, "b")]]
            await _until(lambda: aengine.stats().num_pending == 2)
            start = time.monotonic()
            with pytest.raises(QueueFullError):
                await anext(aengine.generate(c, GREEDY))
            assert time.monotonic() - start < 0.5, "QueueFullError must not wait for room"
            await aengine.abort("a")
            assert aengine.stats().num_pending == 1
            deltas_a = await asyncio.wait_for(tasks[0], TIMEOUT)
            assert deltas_a[-1].finished and deltas_a[-1].finish_reason == "abort"
            assert len(await _collect(aengine, c)) == GREEDY.max_tokens  # room again
            await aengine.abort("b")
            await asyncio.wait_for(tasks[1], TIMEOUT)
            _assert_idle_and_empty(aengine)

    asyncio.run(main())


def test_add_request_error_reaches_the_caller(loaded):
    engine = _engine(loaded)
    too_long = _prompts(loaded.spec.vocab_size, [engine.max_model_len], seed=4)[0]

    async def main():
        async with AsyncEngine(engine) as aengine:
            with pytest.raises(UsageError, match="limit"):
                await asyncio.wait_for(_collect(aengine, too_long), TIMEOUT)
            assert aengine.stats().num_pending == 0
            first = asyncio.create_task(_collect(aengine, [5, 6], LONG, "x"))
            await _until(lambda: aengine.stats().num_pending == 1)
            with pytest.raises(UsageError, match="already in use"):
                await anext(aengine.generate([7], LONG, "x"))
            await aengine.abort("x")
            assert (await asyncio.wait_for(first, TIMEOUT))[-1].finish_reason == "abort"
            for _ in range(2):  # still serving, and a finished request's id is free again
                assert len(await _collect(aengine, [5, 6, 7], request_id="y")) == GREEDY.max_tokens

    asyncio.run(main())


def test_failing_step_kills_every_stream_promptly(loaded):
    engine = _engine(loaded)
    prompts = _prompts(loaded.spec.vocab_size, [6, 30], seed=5)
    real_step = engine.step
    calls = []

    def flaky_step():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return real_step()

    engine.step = flaky_step

    async def main():
        aengine = AsyncEngine(engine).start()
        streams = [_collect(aengine, p, LONG) for p in prompts]
        results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), TIMEOUT)
        for error in results:
            assert isinstance(error, EngineDeadError) and "boom" in str(error)
            assert isinstance(error.__cause__, RuntimeError)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(_collect(aengine, prompts[0]), TIMEOUT)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(aengine.abort("anything"), TIMEOUT)
        aengine.thread.join(TIMEOUT)
        assert not aengine.thread.is_alive()
        await asyncio.wait_for(aengine.shutdown(), TIMEOUT)  # still fine to call

    asyncio.run(main())


def test_idle_loop_sleeps_wakes_fast_and_shuts_down(loaded):
    engine = _engine(loaded)
    steps = _spy(engine)
    wakes, has_unfinished = [], engine.has_unfinished
    engine.has_unfinished = lambda: wakes.append(1) or has_unfinished()  # the loop asks on every wake

    async def main():
        aengine = AsyncEngine(engine).start()
        await asyncio.sleep(0.2)
        assert steps == [] and len(wakes) <= 2, "the idle loop must sleep, not poll"
        added = time.monotonic()
        deltas = await asyncio.wait_for(_collect(aengine, [4, 5, 6]), TIMEOUT)
        assert steps[0][0] - added < 0.05, "a request added while idle must start at once"
        assert deltas[-1].finished
        await asyncio.sleep(0.05)  # the loop re-checks for work once after its last delivery
        num_steps, num_wakes = len(steps), len(wakes)
        await asyncio.sleep(0.2)
        assert (len(steps), len(wakes)) == (num_steps, num_wakes), (
            "the loop kept running after the work ran out"
        )
        # Shutdown aborts what is in flight and fails its stream rather than leaving it hanging.
        stream = aengine.generate([4, 5, 6], LONG)
        await anext(stream)
        await asyncio.wait_for(aengine.shutdown(), TIMEOUT)
        assert not aengine.thread.is_alive()
        with pytest.raises(EngineDeadError, match="shut down"):
            async for _ in stream:  # the deltas queued before shutdown, then the error
                pass
        with pytest.raises(EngineDeadError, match="shut down"):
            await _collect(aengine, [4, 5, 6])
        assert engine.block_manager.num_used_blocks == 0 and not engine.has_unfinished()

    asyncio.run(main())
