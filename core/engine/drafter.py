"""Drafters: cheap guesses of a sequence's next tokens, for the target to verify in one pass.

NgramDrafter is prompt lookup (no extra model): find the latest earlier occurrence of the
sequence's last n tokens (n from ngram_max down to ngram_min) and propose what followed
it. It wins where the output copies its input (edits, quotes, code, summaries with names)
and proposes nothing elsewhere, which costs nothing. The draft-model drafter lives in
draft_model.py. Not here: verification (rejection.py) or how many tokens to ask for
(SpecDecoder's adaptive k).
"""

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .sequence import Sequence


@dataclass
class Draft:
    token_ids: list[int]  # proposed continuation, at most the k asked for
    probs: torch.Tensor | None = None  # [k, V] the draft's distributions; None: point masses (n-gram)


class Drafter(Protocol):
    def propose(self, seqs: list[Sequence], num_tokens: dict[int, int]) -> dict[int, Draft]:
        """Up to num_tokens[seq_id] tokens for each decoding sequence; absent: no proposal."""
        ...

    def release(self, seq_id: int) -> None:
        """Forget a sequence (finished, aborted or preempted)."""
        ...


@dataclass
class _NgramIndex:
    # n-gram -> the index right after its latest occurrence
    positions: dict[tuple[int, ...], int] = field(default_factory=dict)
    num_indexed: int = 0  # n-grams ending before this index are in `positions`


class NgramDrafter:
    def __init__(self, ngram_min: int = 2, ngram_max: int = 4):
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self._indexes: dict[int, _NgramIndex] = {}  # seq_id -> its n-grams, grown incrementally

    def propose(self, seqs: list[Sequence], num_tokens: dict[int, int]) -> dict[int, Draft]:
        drafts = {}
        for seq in seqs:
            ids = self.lookup(seq.seq_id, seq.token_ids, num_tokens[seq.seq_id])
            if ids:
                drafts[seq.seq_id] = Draft(ids)
        return drafts

    def lookup(self, key: int, token_ids: list[int], k: int) -> list[int]:
        """The k tokens after the latest earlier occurrence of the longest matching suffix."""
        index = self._indexes.setdefault(key, _NgramIndex())
        last = len(token_ids) - 1
        # Index n-grams ending before the last token: each has a continuation to propose. The
        # sequence only grows, so each position is indexed once (O(new tokens) per step).
        for end in range(index.num_indexed, last):
            for n in range(self.ngram_min, min(self.ngram_max, end + 1) + 1):
                index.positions[tuple(token_ids[end - n + 1 : end + 1])] = end + 1
        index.num_indexed = max(index.num_indexed, last)
        for n in range(min(self.ngram_max, last), self.ngram_min - 1, -1):
            after = index.positions.get(tuple(token_ids[last - n + 1 :]))
            if after is not None:
                return token_ids[after : after + k]
        return []

    def release(self, seq_id: int) -> None:
        self._indexes.pop(seq_id, None)


def ngram_lookup_reference(token_ids: list[int], k: int, ngram_min: int, ngram_max: int) -> list[int]:
    """The same proposal by a plain backwards scan (the spec NgramDrafter's index follows)."""
    last = len(token_ids) - 1
    for n in range(min(ngram_max, last), ngram_min - 1, -1):
        suffix = token_ids[last - n + 1 :]
        for end in range(last - 1, n - 2, -1):
            if token_ids[end - n + 1 : end + 1] == suffix:
                return token_ids[end + 1 : end + 1 + k]
    return []


def build_drafter(config, target, engine_config) -> Drafter:
    """The drafter a SpeculativeConfig names; `target` is the LoadedModel it drafts for."""
    if config.method == "ngram":
        return NgramDrafter(config.ngram_min, config.ngram_max)
    from .draft_model import DraftModelDrafter  # loads a second model: only when asked

    return DraftModelDrafter.load(config.draft_model, target, engine_config)
