"""SpecDecoder: the engine's speculative-decoding stage between scheduling and sampling.

Before a step it asks the drafter for tokens for each decoding sequence that may speculate
(`propose`, which the Scheduler then fits into blocks and budget); after the forward it
turns each verifying entry's k + 1 logit rows into the kept tokens (`verify`, by
rejection.py's rule) and counts proposed and accepted tokens for /metrics and bench.

Adaptive k: a drafted token costs a verify row whether or not it is kept (measured here,
batch 1 bf16: a step verifying k drafts costs about 1 + 0.05..0.1 k decode steps). Each
sequence keeps a decaying estimate of the chance a draft token is accepted, alpha, and asks
for the k that maximises expected tokens per cost, (1 - alpha^(k+1)) / (1 - alpha) /
(1 + verify_cost k). Where that is k = 0 it stops drafting for a while (4, 8, ... 32 steps)
and then probes again from the prior: text that stopped copying costs almost nothing, text
that starts copying again is found. A prompt-lookup miss proposes nothing and costs nothing.

Which requests speculate: every one unless it asks for num_speculative_tokens=0, except
while penalties apply (they depend on each drafted token before it), min_tokens still
masks EOS, or a logit_bias is set (verification does not apply it); those decode one token
per step as before.
"""

from dataclasses import dataclass, field

import torch

from .config import SpeculativeConfig
from .drafter import Draft, Drafter
from .rejection import verify_greedy, verify_sampled
from .sampler import Sampler, TokenLogprobs, _has_penalty, _logprobs
from .scheduler import ScheduledSeq, SchedulerOutput
from .sequence import Sequence

_MAX_PAUSE = 32  # steps a failing sequence may go without drafting
_PRIOR = (1.2, 2.0)  # (accepted, tried) pseudo-counts: alpha 0.6 before any evidence
_DECAY = 0.7  # weight of the past at each verification: the last few steps dominate


@dataclass(frozen=True)
class SpecStats:
    num_verify_steps: int = 0  # entries that verified at least one draft
    num_draft_tokens: int = 0  # drafted tokens verified (proposed)
    num_accepted_tokens: int = 0  # of those, kept
    num_emitted_tokens: int = 0  # tokens verification steps emitted (accepted + one each)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verifying step (accepted drafts + the target's own): 1.0 means no gain."""
        return self.num_emitted_tokens / self.num_verify_steps if self.num_verify_steps else 0.0

    def engine_fields(self) -> dict[str, int]:
        """As EngineStats' spec_* fields."""
        return {f"spec_{name}": value for name, value in vars(self).items()}


@dataclass
class _SeqState:
    num_accepted: float = _PRIOR[0]  # decayed count of accepted draft tokens
    num_tried: float = _PRIOR[1]  # decayed count of draft tokens decided (accepted or the rejected one)
    pause: int = 0  # steps left without drafting
    next_pause: int = 4  # the pause after the next decision to stop
    drafts: Draft | None = field(default=None, repr=False)  # this step's proposal

    @property
    def alpha(self) -> float:
        return self.num_accepted / self.num_tried


def best_k(alpha: float, max_k: int, verify_cost: float) -> int:
    """The k in 0..max_k maximising expected tokens per step cost (0: drafting does not pay)."""
    best, best_gain = 0, 1.0
    expected = 1.0  # tokens a step yields with k drafts: 1 + alpha + ... + alpha^k
    for k in range(1, max_k + 1):
        expected += alpha**k
        gain = expected / (1 + verify_cost * k)
        if gain > best_gain * 1.001:  # ties go to the smaller k
            best, best_gain = k, gain
    return best


@dataclass
class Verified:
    tokens: dict[int, list[int]] = field(default_factory=dict)  # seq_id -> kept tokens
    logprobs: dict[int, list[TokenLogprobs]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


class SpecDecoder:
    def __init__(self, config: SpeculativeConfig, drafter: Drafter, sampler: Sampler):
        self.config = config
        self.drafter = drafter
        self.sampler = sampler
        self._states: dict[int, _SeqState] = {}
        self._totals = [0, 0, 0, 0]  # SpecStats fields, in order

    def stats(self) -> SpecStats:
        return SpecStats(*self._totals)

    def release(self, seq_id: int) -> None:
        self._states.pop(seq_id, None)
        self.drafter.release(seq_id)

    def _max_k(self, seq: Sequence) -> int:
        p = seq.params
        if _has_penalty(seq) or seq.num_output_tokens < p.min_tokens or p.logit_bias:
            return 0
        k = self.config.num_speculative_tokens
        return k if p.num_speculative_tokens is None else min(k, p.num_speculative_tokens)

    def propose(self, running: list[Sequence]) -> dict[int, list[int]]:
        """Drafts for the decoding sequences that may speculate this step: seq_id -> tokens."""
        asks: dict[int, int] = {}
        seqs = []
        for seq in running:
            if seq.is_prefilling:
                continue
            max_k = self._max_k(seq)
            if max_k == 0:
                continue
            state = self._states.setdefault(seq.seq_id, _SeqState())
            state.drafts = None
            if state.pause > 0:
                state.pause -= 1
                if state.pause == 0:  # probe again from the prior
                    state.num_accepted, state.num_tried = _PRIOR
                continue
            k = max_k
            if self.config.adaptive:
                k = best_k(state.alpha, max_k, self.config.verify_cost)
                if k == 0:
                    state.pause, state.next_pause = state.next_pause, min(2 * state.next_pause, _MAX_PAUSE)
                    continue
            asks[seq.seq_id] = k
            seqs.append(seq)
        if not seqs:
            return {}
        drafts = self.drafter.propose(seqs, asks)
        for seq_id, draft in drafts.items():
            self._states[seq_id].drafts = draft
        return {seq_id: draft.token_ids for seq_id, draft in drafts.items() if draft.token_ids}

    @torch.inference_mode()
    def verify(self, entries: list[ScheduledSeq], logits: torch.Tensor) -> Verified:
        """entries with drafts, and their logit rows [sum(k_i + 1), V] in the same order."""
        result = Verified()
        row = 0
        for entry in entries:
            seq, draft = entry.seq, entry.draft_token_ids
            rows = logits[row : row + len(draft) + 1]  # [k+1, V]
            row += len(draft) + 1
            if not torch.isfinite(rows.sum()):
                result.errors[seq.seq_id] = "the model produced non-finite logits (NaN or inf)"
                continue
            try:
                kept = self._verify_one(seq, draft, rows)
            except Exception as e:  # this request fails, the batch goes on
                result.errors[seq.seq_id] = f"sampling failed: {e!r}"
                continue
            result.tokens[seq.seq_id] = kept
            if seq.params.logprobs is not None:
                ids = torch.tensor(kept, dtype=torch.long, device=rows.device)
                result.logprobs[seq.seq_id] = _logprobs(rows[: len(kept)], [seq] * len(kept), ids)
            self._record(seq.seq_id, len(draft), len(kept) - 1)
        return result

    def _verify_one(self, seq: Sequence, draft: list[int], rows: torch.Tensor) -> list[int]:
        if seq.params.is_greedy:
            return verify_greedy(rows, draft)
        state = self._states.get(seq.seq_id)
        probs = state.drafts.probs if state is not None and state.drafts is not None else None
        q = None if probs is None else probs[: len(draft)]  # the scheduler may have cut the draft
        target = self.sampler.probs(rows, [seq] * len(rows))  # [k+1, V]
        return verify_sampled(target, draft, q, self.sampler.generator(seq))

    def _record(self, seq_id: int, num_drafted: int, num_accepted: int) -> None:
        totals = self._totals
        totals[0] += 1
        totals[1] += num_drafted
        totals[2] += num_accepted
        totals[3] += num_accepted + 1
        state = self._states.get(seq_id)
        if state is None:
            return
        # a accepted, then (unless all were) one rejected: a + 1 Bernoulli trials of alpha.
        num_tried = num_accepted + (num_accepted < num_drafted)
        state.num_accepted = _DECAY * state.num_accepted + num_accepted
        state.num_tried = _DECAY * state.num_tried + num_tried
        if num_accepted:
            state.next_pause = 4  # drafting pays again: a later stop pauses briefly first


def split_logit_rows(out: SchedulerOutput, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's logit rows split into plain sampling entries' [P, V] and verifying ones' [sum(k+1), V]."""
    plain: list[int] = []
    spec: list[int] = []
    row = 0
    for entry in out.scheduled:
        n = entry.num_logit_rows
        (spec if entry.draft_token_ids else plain).extend(range(row, row + n))
        row += n
    return logits[plain], logits[spec]
