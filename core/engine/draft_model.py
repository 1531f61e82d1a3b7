"""DraftModelDrafter: a smaller model sharing the target's tokenizer proposes k tokens.

It keeps its own paged KV cache (its own ModelRunner and BlockManager, as many blocks as
the target's), and for each sequence a shadow Sequence whose cached K/V it tracks. Each
step it first catches up on the tokens the target added (the prompt, at first; then the
one or two tokens verification kept), which also yields the first draft token, then
runs k - 1 single-token steps, all sequences batched. Drafted K/V the target rejected is
not trusted: the next step recomputes from the longest prefix the draft fed that the
sequence really holds. Greedy requests draft by argmax; sampled ones draw from the
draft's own distribution at the request's temperature and filters, which verification
needs as q. Not here: acceptance (rejection.py) or when to draft (SpecDecoder).
"""

from dataclasses import dataclass, replace

import torch

from ..errors import UsageError
from ..models.loader import LoadedModel, load_model
from .block_manager import BlockManager
from .drafter import Draft
from .model_runner import ModelRunner
from .sampler import Sampler
from .scheduler import ScheduledSeq, SchedulerOutput
from .sequence import Sequence


@dataclass
class _Shadow:
    seq: Sequence  # the draft cache's view: token ids fed so far, block table, computed count
    generator: torch.Generator  # the draft's own draws, so the target's stream is untouched


class DraftModelDrafter:
    def __init__(self, draft: LoadedModel, num_blocks: int, block_size: int, seed: int = 0):
        # Its logits only propose: the model's own rounding does, and saves the fp32 head's cost.
        self.runner = ModelRunner(draft.model, num_blocks, block_size, fp32_logits=False)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        self.vocab_size = draft.spec.vocab_size
        self._seed = seed
        self._shadows: dict[int, _Shadow] = {}

    @classmethod
    def load(cls, reference: str, target: LoadedModel, engine_config) -> "DraftModelDrafter":
        draft = load_model(reference, dtype=engine_config.dtype, device=str(target.device))
        check_compatible(draft, target, reference)
        runner_blocks = _target_num_blocks(target, engine_config)
        return cls(draft, runner_blocks, engine_config.block_size, engine_config.seed)

    def release(self, seq_id: int) -> None:
        shadow = self._shadows.pop(seq_id, None)
        if shadow is not None:
            self.block_manager.deallocate(shadow.seq)

    def propose(self, seqs: list[Sequence], num_tokens: dict[int, int]) -> dict[int, Draft]:
        active = [(seq, self._sync(seq, num_tokens[seq.seq_id])) for seq in seqs]
        active = [(seq, shadow) for seq, shadow in active if shadow is not None]
        drafts = {seq.seq_id: Draft([], None if seq.params.is_greedy else []) for seq, _ in active}
        # Step 0 computes every uncomputed token (a catch-up chunk); later steps one draft each.
        while active:
            out = SchedulerOutput([ScheduledSeq(s.seq, s.seq.num_uncomputed_tokens) for _, s in active])
            logits = self.runner.run(out).logits  # [B, V]
            for (seq, shadow), row in zip(active, logits, strict=True):
                shadow.seq.num_computed_tokens = shadow.seq.num_tokens
                token, probs = self._choose(seq, shadow, row)
                draft = drafts[seq.seq_id]
                draft.token_ids.append(token)
                if probs is not None:
                    draft.probs.append(probs)
                shadow.seq.append_token(token)
            active = [(q, s) for q, s in active if len(drafts[q.seq_id].token_ids) < num_tokens[q.seq_id]]
        for draft in drafts.values():
            if draft.probs is not None:
                draft.probs = torch.stack(draft.probs)  # [k, V]
        return drafts

    def _sync(self, seq: Sequence, k: int) -> _Shadow | None:
        """Bring seq's shadow to seq's tokens, trusting only K/V of a prefix it really holds, and
        give it blocks for k - 1 drafted tokens beyond them; None when the cache is full."""
        shadow = self._shadows.get(seq.seq_id)
        bm = self.block_manager
        if shadow is None:
            params = replace(seq.params, prompt_logprobs=None)  # the draft scores no prompt
            generator = torch.Generator().manual_seed(((params.seed or 0) + self._seed + seq.seq_id) % 2**63)
            shadow = _Shadow(Sequence(seq.request_id, seq.token_ids, params), generator)
            if not bm.can_allocate(shadow.seq):
                return None
            bm.allocate(shadow.seq)
            self._shadows[seq.seq_id] = shadow
        fed, target = shadow.seq.token_ids, seq.token_ids
        valid = min(shadow.seq.num_computed_tokens, len(target) - 1)
        for i in range(valid):
            if fed[i] != target[i]:  # drafted tokens the target did not keep
                valid = i
                break
        shadow.seq.token_ids = list(target)
        shadow.seq.num_computed_tokens = valid
        bm.trim(shadow.seq)
        if not bm.can_append(shadow.seq, k - 1):
            return None
        bm.may_append(shadow.seq, k - 1)
        return shadow

    def _choose(
        self, seq: Sequence, shadow: _Shadow, logits: torch.Tensor
    ) -> tuple[int, torch.Tensor | None]:
        if seq.params.is_greedy:
            return int(logits.max(-1).indices), None
        probs = Sampler.probs(logits[None], [seq])[0]  # [V] at the request's temperature and filters
        noise = torch.empty(probs.shape).uniform_(generator=shadow.generator).log_().neg_()
        return int((probs / noise.to(probs.device)).argmax()), probs


def check_compatible(draft: LoadedModel, target: LoadedModel, reference: str) -> None:
    """A draft must speak the target's token ids: same vocabulary, same tokenizer."""
    if draft.spec.vocab_size != target.spec.vocab_size:
        raise UsageError(
            f"draft model {reference} has a vocabulary of {draft.spec.vocab_size} tokens, "
            f"the target {target.spec.vocab_size}: a draft must share the target's tokenizer"
        )
    if draft.tokenizer is not None and target.tokenizer is not None:
        if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise UsageError(f"draft model {reference} has a different tokenizer from the target's")


def _target_num_blocks(target: LoadedModel, engine_config) -> int:
    """As many blocks as the target's cache, at the draft's smaller bytes per token."""
    from .config import default_kv_cache_bytes

    kv_bytes = engine_config.kv_cache_memory or default_kv_cache_bytes(target.device)
    token_bytes = target.spec.kv_bytes_per_token(target.model.dtype.itemsize)
    return max(kv_bytes // (token_bytes * engine_config.block_size), 2)
