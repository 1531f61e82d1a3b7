"""Sequence: one request's tokens and its place in the engine (pure Python, no torch).

A sequence's tokens are its prompt followed by what it generated. `num_computed_tokens`
counts tokens whose K/V sit in the cache; the scheduler computes the rest, a chunk at a
time while prefilling, one token per step while decoding. Preemption (recompute) resets
it to 0 and the sequence re-enters the waiting queue with all its tokens as the prompt
to recompute, while `num_prompt_tokens` keeps counting only the user's prompt.
"""

import enum
import itertools
from dataclasses import dataclass, field

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # in the waiting queue, holds no blocks
    RUNNING = "running"  # holds blocks; prefilling or decoding
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens, or the model's context length
    ABORT = "abort"  # the client went away or asked to cancel
    ERROR = "error"  # processing this request failed (e.g. non-finite logits); others carry on


@dataclass
class Timing:
    arrival: float  # when the request was added (engine clock)
    first_scheduled: float | None = None
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per generated token
    finished: float | None = None


_ids = itertools.count()


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float = 0.0,
        eos_token_ids: tuple[int, ...] = (),
    ):
        if not prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None  # why it failed, with FinishReason.ERROR
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache at admission
        # Prompt positions whose logits have scored the next prompt token (prompt_logprobs):
        # positions [0, n) gave the logprobs of tokens 1..n. Kept across preemption, so a
        # recompute scores each token once.
        self.num_prompt_logprobs = 0
        self.block_table: list[int] = []  # physical block ids, in token order
        self.num_preemptions = 0
        self.timing = Timing(arrival=arrival_time)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
            f"blocks={len(self.block_table)}, {self.status.value})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than the last token still lacks K/V (a prompt, or a recompute after preemption)."""
        return self.num_uncomputed_tokens > 1

    @property
    def needs_prompt_logits(self) -> bool:
        """prompt_logprobs were asked for and some prompt token is not scored yet."""
        return (
            self.params.prompt_logprobs is not None and self.num_prompt_logprobs < self.num_prompt_tokens - 1
        )

    @property
    def max_prefix_cache_tokens(self) -> int:
        """Most leading tokens the prefix cache may supply. Cached K/V come without logits, so a
        sequence still owed prompt logprobs computes every position they need (as vLLM, which
        skips the cache for such requests); the last token always runs, to give logits."""
        return self.num_prompt_logprobs if self.needs_prompt_logits else self.num_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def num_blocks_needed(self, block_size: int, num_tokens: int | None = None) -> int:
        n = self.num_tokens if num_tokens is None else num_tokens
        return (n + block_size - 1) // block_size

    def block_tokens(self, index: int, block_size: int) -> list[int]:
        """Token ids held by logical block `index`."""
        return self.token_ids[index * block_size : (index + 1) * block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def truncate(self, num_tokens: int) -> None:
        """Drop tokens past `num_tokens` of a FINISHED sequence: a stop string ended it inside a
        run of several verified tokens, and what followed was never generated as far as the
        user is concerned (usage and token ids match a run without speculation)."""
        if not self.is_finished or num_tokens < self.num_prompt_tokens:
            raise ValueError(f"can only truncate the output of a finished sequence, not {self!r}")
        del self.token_ids[num_tokens:]
