"""Scheduler: continuous batching with chunked prefill and preemption by recompute.

Each step gets a token budget (max_num_batched_tokens) and a sequence budget
(max_num_seqs). Running sequences go first, in arrival order: a decode costs one token,
an unfinished prefill takes a chunk of what budget is left. Waiting sequences are then
admitted FCFS while blocks and budget last; with chunked prefill a long prompt starts
with whatever budget remains, so decodes never stall behind it.

When a decode needs a block and none is free, the newest running sequence is preempted:
its blocks are freed and it goes back to the head of the waiting queue, to be recomputed
(the prefix cache usually returns most of its blocks). Every admitted sequence fits in
the cache alone (the engine caps max_model_len by the cache size), so preempting
newer sequences always lets the oldest progress: no deadlock, no starvation.

Speculative decoding is an extension the caller opts into per step: `schedule(drafts)`
with proposed tokens for some decoding sequences schedules each of those as a 1 + k token
chunk (its last token, then the drafts) on lookahead slots, and `update` then takes the
list of tokens the verification kept. Drafts never preempt anyone: without room (blocks
or budget) they are cut or dropped. Without drafts, nothing differs from plain decoding.

Pure Python: capacity planning drives this class with a simulated clock.
"""

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # sequences in one step
    max_num_batched_tokens: int = 2048  # tokens computed in one step (prefill chunks + decodes)
    max_model_len: int = 8192  # prompt + output, per sequence
    enable_chunked_prefill: bool = True

    def __post_init__(self):
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError("without chunked prefill, max_num_batched_tokens must be >= max_model_len")


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # computed this step, starting at seq.num_computed_tokens (drafts included)
    draft_token_ids: list[int] = field(default_factory=list)  # proposed tokens verified this step

    @property
    def start(self) -> int:
        return self.seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token, so it yields a new token."""
        end = self.seq.num_tokens + len(self.draft_token_ids)
        return self.seq.num_computed_tokens + self.num_new_tokens == end

    @property
    def num_logit_rows(self) -> int:
        """Rows of logits this entry needs: one per verified position, none for a partial prefill."""
        return 1 + len(self.draft_token_ids) if self.samples else 0

    @property
    def prompt_logprob_positions(self) -> range:
        """Positions of this chunk whose logits score the next prompt token (prompt_logprobs),
        minus those scored before a preemption; the last prompt position's logits sample."""
        seq = self.seq
        if not seq.needs_prompt_logits:
            return range(0)
        lo = max(self.start, seq.num_prompt_logprobs)
        return range(lo, max(lo, min(self.start + self.num_new_tokens, seq.num_prompt_tokens - 1)))

    def input_token_ids(self) -> list[int]:
        """The tokens this step computes: the sequence's, then any drafts."""
        ids = self.seq.token_ids[self.start : self.start + self.num_new_tokens]
        return ids + self.draft_token_ids if self.draft_token_ids else ids


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)  # running order
    preempted: list[Sequence] = field(default_factory=list)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # total, for metrics

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if seq.num_tokens >= self.config.max_model_len:
            raise ValueError(
                f"prompt of {seq.num_tokens} tokens leaves no room to generate within "
                f"max_model_len {self.config.max_model_len}"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self, drafts: dict[int, list[int]] | None = None) -> SchedulerOutput:
        """drafts: seq_id -> proposed tokens for decoding sequences (speculative decoding)."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        # Blocks the decodes still to be scheduled need for their own next token: drafts leave them.
        num_reserved = sum(self.block_manager.num_blocks_missing(s) for s in self.running) if drafts else 0
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            draft: list[int] = []
            if seq.is_prefilling:
                n = min(seq.num_uncomputed_tokens, budget)
            else:
                if drafts:
                    num_reserved -= self.block_manager.num_blocks_missing(seq)
                if drafts and seq.seq_id in drafts:
                    draft = self._fit_draft(seq, drafts[seq.seq_id], budget, num_reserved)
                if not self._make_room_to_append(seq, out, len(draft)):
                    break  # seq itself was the newest and got preempted; nothing follows it
                n = 1 + len(draft)
            out.scheduled.append(ScheduledSeq(seq, n, draft))
            budget -= n
            i += 1
        # Admitting new work right after preempting would only thrash the cache.
        while (
            self.waiting and budget > 0 and not out.preempted and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            # Without chunking the whole prompt must fit this step. Checked before allocating
            # (conservatively, ignoring prefix hits): allocate-then-free would evict cached blocks.
            if not self.config.enable_chunked_prefill and seq.num_tokens > budget:
                break
            if not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        return out

    def _fit_draft(self, seq: Sequence, draft: list[int], budget: int, num_reserved: int) -> list[int]:
        """The part of a draft that fits: verifying k drafts yields up to k + 1 tokens, which must
        stay within max_tokens and max_model_len; the chunk within the budget; the lookahead
        slots within the free blocks (a draft is cut, never a cause of preemption)."""
        room = min(
            seq.params.max_tokens - seq.num_output_tokens,
            self.config.max_model_len - seq.num_tokens,
            budget,
        )
        # Lookahead blocks leave the reserved ones, so that no decode later in this step has
        # to preempt for want of the block a draft took.
        bm = self.block_manager
        num_spare_blocks = len(seq.block_table) + bm.num_free_blocks - max(num_reserved, 0)
        num_slots = num_spare_blocks * bm.block_size - seq.num_tokens
        return draft[: max(min(room - 1, num_slots), 0)]

    def _make_room_to_append(self, seq: Sequence, out: SchedulerOutput, num_lookahead: int = 0) -> bool:
        """Ensure seq's next token has a slot, preempting newer sequences; False if seq itself went.
        num_lookahead drafts' slots are only asked for when they fit (see _fit_draft)."""
        if num_lookahead:
            self.block_manager.may_append(seq, num_lookahead)
            return True
        while not self.block_manager.can_append(seq):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        self.block_manager.may_append(seq)
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)  # newest preempted first, so older ones end up in front
        out.preempted.append(seq)

    def update(self, out: SchedulerOutput, sampled: list[int | list[int] | None]) -> list[Sequence]:
        """Record a step's results: sampled[i] is the new token of out.scheduled[i] (None for a
        prefill chunk that did not reach the end), or for an entry with drafts the list of
        tokens its verification kept (accepted drafts, then the target's own token). Returns
        sequences that got tokens."""
        grown = []
        for entry, token in zip(out.scheduled, sampled, strict=True):
            seq = entry.seq
            if entry.draft_token_ids:
                if isinstance(token, int):
                    raise ValueError(f"{seq!r} verified drafts: its result is a list of tokens")
                if token is None:  # its verification failed: nothing computed counts
                    self.block_manager.trim(seq)
                    continue
                self._update_verified(entry, token)
                grown.append(seq)
                continue
            seq.num_computed_tokens += entry.num_new_tokens
            self.block_manager.cache_full_blocks(seq)
            if token is None:
                continue
            seq.append_token(token)
            grown.append(seq)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
        return grown

    def _update_verified(self, entry: ScheduledSeq, tokens: list[int]) -> None:
        """Append kept tokens up to a stop; only the K/V of inputs that match the kept tokens
        (the last token and the accepted drafts) count as computed, so neither the prefix
        cache nor the next step ever trusts a rejected draft's slot."""
        seq, draft = entry.seq, entry.draft_token_ids
        if not 1 <= len(tokens) <= len(draft) + 1:
            raise ValueError(f"{seq!r}: {len(tokens)} tokens kept from {len(draft)} drafts")
        start = entry.start
        reason = None
        for token in tokens:
            seq.append_token(token)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                break
        kept = seq.token_ids[start + 1 :]
        num_accepted = 0  # the kept tokens that are drafts at their own position
        while num_accepted < min(len(kept), len(draft)) and kept[num_accepted] == draft[num_accepted]:
            num_accepted += 1
        seq.num_computed_tokens = start + 1 + num_accepted
        self.block_manager.cache_full_blocks(seq)
        if reason is not None:
            self.finish(seq, reason)
        else:
            self.block_manager.trim(seq)

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        # The sampler masks EOS and stop ids for the first min_tokens tokens; same rule here.
        may_stop = seq.num_output_tokens > p.min_tokens
        if may_stop and ((token in seq.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids):
            return FinishReason.STOP
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None

    def finish(self, seq: Sequence, reason: FinishReason) -> list[int]:
        """End seq and free its blocks. Returns the ids of blocks discarded because the
        request failed (reason ERROR): their K/V may be garbage, the caller wipes them."""
        discarded: list[int] = []
        if seq.is_finished:
            return discarded
        if seq in self.running:
            self.running.remove(seq)
            discarded = self.block_manager.deallocate(seq, discard=reason is FinishReason.ERROR)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        return discarded

    def abort(self, request_id: str) -> list[Sequence]:
        seqs = [s for s in (*self.running, *self.waiting) if s.request_id == request_id]
        for seq in seqs:
            self.finish(seq, FinishReason.ABORT)
        return seqs
