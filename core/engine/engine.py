"""Engine: add_request / step / abort, and generate() for offline batches.

step() is schedule -> run -> sample -> update -> detokenize; with speculative decoding it
is draft -> schedule -> run -> sample and verify -> update -> detokenize, and a delta may
carry several tokens. Everything a server or a benchmark needs to report (deltas, timings,
cache, queue and speculation figures) comes out of here.
"""

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from ..errors import UsageError
from ..models.loader import LoadedModel, load_model
from .block_manager import BlockManager
from .config import EngineConfig, default_kv_cache_bytes
from .detokenizer import Detokenizer
from .drafter import build_drafter
from .model_runner import ModelRunner
from .prompt_logprobs import score_prompts
from .sampler import Sampler, TokenLogprobs
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerConfig
from .sequence import FinishReason, Sequence
from .spec_decode import SpecDecoder, split_logit_rows

log = logging.getLogger("llmtool.engine")


@dataclass
class RequestOutput:
    """What one step added to one request (a delta), plus its totals so far."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    new_logprobs: list[TokenLogprobs] | None = None
    # On the first delta of a request that asked for them: one per prompt token, None for the first.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    error: str | None = None  # why, when finish_reason is "error"


@dataclass
class Completion:
    """A finished request, as generate() returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    num_cached_tokens: int
    ttft: float  # seconds from arrival to first token
    token_times: list[float] = field(default_factory=list)  # engine clock, one per token
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # None for the first prompt token
    error: str | None = None  # why, when finish_reason is "error"


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks in use
    num_blocks: int
    block_size: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    num_preemptions: int
    spec_num_verify_steps: int = 0  # decode steps that verified drafted tokens
    spec_num_draft_tokens: int = 0  # drafted tokens verified
    spec_num_accepted_tokens: int = 0  # of those, kept
    spec_num_emitted_tokens: int = 0  # tokens those steps produced (accepted + one each)


class Engine:
    def __init__(
        self,
        config: EngineConfig = EngineConfig(),
        loaded: LoadedModel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.loaded = loaded or load_model(config.model, dtype=config.dtype, device=config.device)
        self.tokenizer = self.loaded.tokenizer
        spec = self.loaded.spec
        self.clock = clock
        kv_bytes = config.kv_cache_memory or default_kv_cache_bytes(self.loaded.device)
        token_bytes = spec.kv_bytes_per_token(self.loaded.model.dtype.itemsize)
        num_blocks = kv_bytes // (token_bytes * config.block_size)
        capacity = num_blocks * config.block_size
        max_len = min(config.max_model_len or spec.max_position_embeddings, capacity)
        if capacity < 2 * config.block_size:
            raise UsageError(
                f"KV cache of {kv_bytes} bytes holds only {capacity} tokens: give it more memory"
            )
        if max_len < 2 * config.block_size:
            raise UsageError(f"max_model_len must be at least {2 * config.block_size} tokens")
        self.capacity_tokens = capacity
        log.info(
            "KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB, %d bytes/token); max_model_len %d",
            num_blocks,
            config.block_size,
            capacity,
            kv_bytes / 1024**3,
            token_bytes,
            max_len,
        )
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=max(
                    config.max_num_batched_tokens, 0 if config.enable_chunked_prefill else max_len
                ),
                max_model_len=max_len,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.block_manager,
        )
        self.runner = ModelRunner(self.loaded.model, num_blocks, config.block_size, config.fp32_logits)
        self.sampler = Sampler(spec.vocab_size, seed=config.seed)
        self.spec: SpecDecoder | None = None
        if config.speculative is not None:
            drafter = build_drafter(config.speculative, self.loaded, config)
            self.spec = SpecDecoder(config.speculative, drafter, self.sampler)
        self.eos_token_ids = tuple(spec.eos_token_ids)
        self._seqs: dict[str, Sequence] = {}
        self._detok: dict[int, Detokenizer] = {}
        self._logprobs: dict[int, list[TokenLogprobs]] = {}
        self._prompt_logprobs: dict[int, list[TokenLogprobs | None]] = {}

    @property
    def max_model_len(self) -> int:
        return self.scheduler.config.max_model_len

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> Sequence:
        if request_id in self._seqs:
            raise UsageError(f"request id '{request_id}' is already in use")
        if self.tokenizer is None and (isinstance(prompt, str) or params.stop):
            raise UsageError("this model has no tokenizer: give token ids and no stop strings")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise UsageError("the prompt is empty")
        vocab = self.loaded.spec.vocab_size
        if not all(0 <= t < vocab for t in ids):  # else the embedding lookup fails mid-step, for everyone
            raise UsageError(f"prompt token ids must be in [0, {vocab})")
        if not all(t < vocab for t, _ in params.logit_bias):
            raise UsageError(f"logit_bias token ids must be in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise UsageError(
                f"the prompt has {len(ids)} tokens; this engine's limit is {self.max_model_len - 1}"
            )
        seq = Sequence(request_id, ids, params, self.clock(), self.eos_token_ids)
        self.scheduler.add(seq)
        self._seqs[request_id] = seq
        if params.prompt_logprobs is not None:
            self._prompt_logprobs[seq.seq_id] = [None]  # the first token has no context to score it
        if self.tokenizer is not None:
            self._detok[seq.seq_id] = Detokenizer(self.tokenizer, ids, params)
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request and forget it, whether it is queued, running or finished but unread."""
        self.scheduler.abort(request_id)
        self.release(request_id)

    def release(self, request_id: str) -> None:
        """Forget a request (a streaming caller that already has every delta needs no Completion)."""
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._forget(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One scheduled batch forward. A failure that belongs to some requests (non-finite
        logits, a sampler or detokenizer error, even the whole forward pass raising) ends
        those requests with finish_reason "error"; the engine and every other request go on."""
        drafts = self.spec.propose(self.scheduler.running) if self.spec is not None else None
        out = self.scheduler.schedule(drafts)
        if out.is_empty:
            return []
        now = self.clock()
        for entry in out.scheduled:
            if entry.seq.timing.first_scheduled is None:
                entry.seq.timing.first_scheduled = now
        try:
            forward = self.runner.run(out)
            if forward.prompt_hidden is not None:
                score_prompts(out, forward.prompt_hidden, self.runner.head, self._prompt_logprobs)
        except Exception as e:  # we cannot tell whose input broke it: the batch fails, not the engine
            log.exception("a forward pass failed; its %d requests end with an error", len(out.scheduled))
            return [self._fail(entry.seq, f"the forward pass failed: {e!r}") for entry in out.scheduled]
        logits = forward.logits  # [S, V]
        verifying = [e for e in out.scheduled if e.draft_token_ids]
        sampling = [e.seq for e in out.scheduled if e.samples and not e.draft_token_ids]
        plain_logits, spec_logits = split_logit_rows(out, logits) if verifying else (logits, None)
        tokens, logprobs, errors = self._sample(plain_logits, sampling)
        if verifying:
            verified = self.spec.verify(verifying, spec_logits)
            tokens.update(verified.tokens)
            logprobs.update(verified.logprobs)
            errors.update(verified.errors)
        num_before = {e.seq.seq_id: e.seq.num_tokens for e in out.scheduled}
        grown = self.scheduler.update(out, [tokens.get(e.seq.seq_id) for e in out.scheduled])
        now = self.clock()
        outputs = [self._emit(s, now, num_before[s.seq_id], logprobs.get(s.seq_id)) for s in grown]
        failed = [e.seq for e in out.scheduled if e.seq.seq_id in errors]
        return outputs + [self._fail(seq, errors[seq.seq_id]) for seq in failed]

    def _sample(
        self, logits: torch.Tensor, seqs: list[Sequence]
    ) -> tuple[dict[int, int | list[int]], dict[int, TokenLogprobs | list[TokenLogprobs]], dict[int, str]]:
        """Tokens and logprobs by seq_id for rows that sample cleanly; errors for the others."""
        tokens: dict[int, int] = {}
        logprobs: dict[int, TokenLogprobs] = {}
        errors: dict[int, str] = {}
        if not seqs:
            return tokens, logprobs, errors
        # A row's sum is finite iff all its logits are (they are far from overflowing), and
        # one reduction costs a fifth of isfinite().all() on 32 x 49k logits.
        finite = torch.isfinite(logits.sum(dim=-1)).tolist()
        rows = [i for i, ok in enumerate(finite) if ok]
        for i, ok in enumerate(finite):
            if not ok:
                errors[seqs[i].seq_id] = "the model produced non-finite logits (NaN or inf)"
        # One batched draw; if it raises, row by row, so only the request that breaks it fails.
        batches = [rows] if rows else []
        while batches:
            batch = batches.pop()
            try:
                part = logits if len(batch) == len(seqs) else logits[batch]
                result = self.sampler.sample(part, [seqs[i] for i in batch])
            except Exception as e:
                if len(batch) == 1:
                    log.exception("sampling failed for request %s", seqs[batch[0]].request_id)
                    errors[seqs[batch[0]].seq_id] = f"sampling failed: {e!r}"
                else:
                    batches += [[i] for i in batch]
                continue
            for i, token, lp in zip(batch, result.token_ids, result.logprobs, strict=True):
                tokens[seqs[i].seq_id] = token
                if lp is not None:
                    logprobs[seqs[i].seq_id] = lp
        return tokens, logprobs, errors

    def _fail(self, seq: Sequence, why: str) -> RequestOutput:
        """End one request with finish_reason "error"; K/V blocks only it held are wiped, so a
        NaN it wrote can never reach a later request through the cache or a masked slot."""
        seq.error = why
        wiped = self.scheduler.finish(seq, FinishReason.ERROR)
        seq.finish_reason = FinishReason.ERROR  # also when it had just finished (a detokenizer error)
        if wiped:
            self.runner.wipe_blocks(wiped)
        seq.timing.finished = self.clock()
        self._release_streams(seq.seq_id)
        return self._output(seq, [], "", None)

    def _release_streams(self, seq_id: int) -> None:
        """Drop a sequence's random stream and its drafting state."""
        self.sampler.release(seq_id)
        if self.spec is not None:
            self.spec.release(seq_id)

    def _emit(self, seq: Sequence, now: float, num_before: int, logprobs) -> RequestOutput:
        """The delta of the tokens seq got this step (one, or several verified at once)."""
        tokens = seq.token_ids[num_before:]
        if isinstance(logprobs, TokenLogprobs):
            logprobs = [logprobs]
        t = seq.timing
        if t.first_token is None:
            t.first_token = now
        text = ""
        detok = self._detok.get(seq.seq_id)
        if detok is not None:
            try:
                # One token at a time: a stop string may end the output inside a verified run.
                for i, token in enumerate(tokens):
                    delta = detok.push([token])
                    text += delta.text
                    if delta.stop_hit:
                        if not seq.is_finished:
                            self.scheduler.finish(seq, FinishReason.STOP)
                        seq.truncate(num_before + i + 1)
                        tokens = tokens[: i + 1]
                        break
                else:
                    if seq.is_finished:
                        text += detok.flush()
            except Exception as e:
                log.exception("detokenizing failed for request %s", seq.request_id)
                return self._fail(seq, f"detokenizing failed: {e!r}")
        t.token_times += [now] * len(tokens)
        if logprobs is not None:
            logprobs = logprobs[: len(tokens)]
            self._logprobs.setdefault(seq.seq_id, []).extend(logprobs)
        if seq.is_finished:
            t.finished = now
            self._release_streams(seq.seq_id)
        is_first = num_before == seq.num_prompt_tokens
        return self._output(
            seq, tokens, text, logprobs, self._prompt_logprobs.get(seq.seq_id) if is_first else None
        )

    @staticmethod
    def _output(seq: Sequence, tokens: list[int], text: str, logprobs, prompt_logprobs=None) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=tokens,
            new_text=text,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason.value if seq.finish_reason else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            new_logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            error=seq.error,
        )

    def pop_finished(self, request_id: str) -> Completion:
        """Hand over a finished request's full result and forget it."""
        seq = self._seqs[request_id]
        detok = self._detok.get(seq.seq_id)
        t = seq.timing
        completion = Completion(
            request_id=request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_token_ids,
            text=detok.text if detok else "",
            finish_reason=seq.finish_reason.value if seq.finish_reason else "abort",
            num_cached_tokens=seq.num_cached_tokens,
            ttft=(t.first_token - t.arrival) if t.first_token is not None else float("nan"),
            token_times=list(t.token_times),
            logprobs=self._logprobs.get(seq.seq_id),
            prompt_logprobs=self._prompt_logprobs.get(seq.seq_id),
            error=seq.error,
        )
        self._forget(seq)
        return completion

    def _forget(self, seq: Sequence) -> None:
        self._seqs.pop(seq.request_id, None)
        self._detok.pop(seq.seq_id, None)
        self._logprobs.pop(seq.seq_id, None)
        self._prompt_logprobs.pop(seq.seq_id, None)
        self._release_streams(seq.seq_id)

    def generate(
        self,
        prompts: Seq[str | list[int]],
        params: SamplingParams | Seq[SamplingParams] = SamplingParams(),
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Run prompts to completion together; results in prompt order."""
        per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        ids = [f"gen-{i}-{id(self)}" for i in range(len(prompts))]
        try:
            for rid, prompt, p in zip(ids, prompts, per_prompt, strict=True):
                self.add_request(rid, prompt, p)
        except BaseException:  # one bad prompt: none of this batch stays queued
            for rid in ids:
                self.abort(rid)
            raise
        done = 0
        while self.has_unfinished():
            done += sum(o.finished for o in self.step())
            if on_step is not None:
                on_step(done, len(prompts))
        return [self.pop_finished(rid) for rid in ids]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=bm.usage,
            num_blocks=bm.num_blocks,
            block_size=bm.block_size,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions,
            **(self.spec.stats().engine_fields() if self.spec is not None else {}),
        )
