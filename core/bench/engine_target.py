"""The in-process target: requests go straight to an AsyncEngine, no HTTP, timed like the
HTTP client times a server so the two kinds of record compare directly.

A delta whose text is empty (the detokenizer holds back a partial character or a possible
stop string) is what an HTTP client would not see as a chunk: its tokens ride on the next
text-carrying delta, exactly as they would arrive over SSE.
"""

import time

from ..engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from ..engine.sampling_params import SamplingParams
from ..errors import UsageError
from .records import RequestRecord


class EngineTarget:
    def __init__(self, engine: AsyncEngine, tokenizer, *, chat: bool = False, ignore_eos: bool = True,
                 temperature: float = 0.0, seed: int | None = None):  # fmt: skip
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat = chat
        self.ignore_eos = ignore_eos
        self.temperature = temperature
        self.seed = seed

    def prompt_ids(self, prompt: str) -> list[int]:
        if not self.chat:
            return self.tokenizer.encode(prompt)
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def send(
        self,
        index: int,
        prompt: str,
        output_len: int,
        scheduled: float,
        t0: float,
        prompt_len: int | None = None,
    ) -> RequestRecord:
        record = RequestRecord(index, scheduled, prompt_len=prompt_len)
        params = SamplingParams(
            max_tokens=output_len,
            temperature=self.temperature,
            ignore_eos=self.ignore_eos,
            seed=None if self.seed is None else self.seed + index,
        )
        ids = self.prompt_ids(prompt)
        record.sent = time.perf_counter() - t0
        pending_tokens = 0
        texts: list[str] = []
        try:
            async with await self.engine.add(ids, params) as stream:
                async for out in stream:
                    now = time.perf_counter() - t0
                    pending_tokens += len(out.new_token_ids)
                    if out.new_text:
                        if record.first_token is None:
                            record.first_token = now
                        record.chunk_times.append(now)
                        record.chunk_tokens.append(pending_tokens)
                        record.output_text_len += len(out.new_text)
                        texts.append(out.new_text)
                        record.end = now
                        pending_tokens = 0
                    if out.finished:
                        record.prompt_tokens = out.num_prompt_tokens
                        record.output_tokens = out.num_output_tokens
                        if pending_tokens and record.chunk_tokens:  # trailing tokens with no text (EOS)
                            record.chunk_tokens[-1] += pending_tokens
                        if out.finish_reason == "error":
                            record.error, record.error_detail = "engine_error", out.error
                        elif out.finish_reason == "abort":
                            record.error, record.error_detail = "abort", "the engine aborted the request"
        except QueueFullError as e:
            record.error, record.error_detail = "queue_full", str(e)
        except UsageError as e:
            record.error, record.error_detail = "invalid", str(e)
        except EngineDeadError as e:
            record.error, record.error_detail = "engine_dead", str(e)
        record.output_text = "".join(texts)
        if record.first_token is None and record.error is None:
            record.error, record.error_detail = "no_output", "the request ended without any text"
        return record
