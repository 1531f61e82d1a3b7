"""SamplingParams: how one request's tokens are chosen and when it stops (frozen, validated)."""

from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16  # most tokens to generate
    min_tokens: int = 0  # EOS and stop ids are masked until this many tokens exist
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus: smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # 0 disables; else keep the k most likely tokens
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability
    seed: int | None = None  # per-request generator: same seed, same tokens, whatever the batch
    presence_penalty: float = 0.0  # OpenAI: subtract once for every token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtract per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # HF/CTRL: divide positive (multiply negative) logits of seen tokens
    stop: tuple[str, ...] = ()  # stop strings; the text ends before them
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end generation (kept in token ids)
    ignore_eos: bool = False  # keep generating through EOS (benchmarks)
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob plus top-k alternatives
    prompt_logprobs: int | None = (
        None  # None: none; k >= 0: each prompt token's logprob (after the first) plus top-k
    )
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]) added before sampling
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    num_speculative_tokens: int | None = None  # None: the engine's setting; 0: no speculation; k: at most k

    def __post_init__(self):
        checks = (
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens must be between 0 and max_tokens"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be between 0 and 20"),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
                "prompt_logprobs must be between 0 and 20",
            ),
            (
                all(t >= 0 and -100 <= b <= 100 for t, b in self.logit_bias),
                "logit_bias maps token ids >= 0 to biases in [-100, 100]",
            ),
            (all(self.stop), "stop strings must not be empty"),
            (
                self.num_speculative_tokens is None or self.num_speculative_tokens >= 0,
                "num_speculative_tokens must be >= 0 (0 turns speculation off for the request)",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def is_greedy(self) -> bool:
        # Below 1e-5 logits / T overflows to inf and softmax to NaN; the limit is argmax anyway.
        return self.temperature < 1e-5
