"""EngineConfig (with SpeculativeConfig) and the KV-cache sizing rule."""

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..models.aliases import DEFAULT_MODEL

DEFAULT_CPU_KV_FRACTION = 0.10  # of available RAM, when --kv-cache-memory is not given
DEFAULT_CPU_KV_BOUNDS = (256 * 1024**2, 4 * 1024**3)
DEFAULT_GPU_KV_FRACTION = 0.80  # of free device memory after the weights are loaded


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding: a drafter proposes tokens, the target verifies them in one pass."""

    method: str = "ngram"  # "ngram" (prompt lookup, no extra model) or "draft" (a smaller model)
    draft_model: str | None = None  # with method "draft": a model sharing the target's tokenizer
    num_speculative_tokens: int = 5  # most tokens proposed per sequence per step
    ngram_max: int = 4  # prompt lookup tries the longest suffix first, down to ngram_min tokens
    ngram_min: int = 2  # 1 matches too often in plain prose, and each miss costs a verify row
    adaptive: bool = True  # per sequence, draft the k that pays given its recent acceptance (0: pause)
    verify_cost: float = 0.1  # a step verifying k drafts costs 1 + verify_cost * k decode steps

    def __post_init__(self):
        if self.method not in ("ngram", "draft"):
            raise UsageError(f"speculative method must be 'ngram' or 'draft:MODEL', not '{self.method}'")
        if (self.method == "draft") != bool(self.draft_model):
            raise UsageError("a draft model is given with the method 'draft' (draft:MODEL), and only then")
        if self.num_speculative_tokens < 1:
            raise UsageError(f"num_speculative_tokens must be at least 1, got {self.num_speculative_tokens}")
        if self.verify_cost < 0:
            raise UsageError(f"verify_cost must be >= 0, got {self.verify_cost}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise UsageError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}")

    @classmethod
    def parse(cls, spec: str, num_speculative_tokens: int = 5) -> "SpeculativeConfig":
        """From the flag's form: 'ngram' or 'draft:MODEL'."""
        method, _, model = spec.partition(":")
        if method == "ngram" and not model:
            return cls("ngram", None, num_speculative_tokens)
        if method == "draft" and model:
            return cls("draft", model, num_speculative_tokens)
        raise UsageError(f"--speculative must be 'ngram' or 'draft:MODEL', not '{spec}'")


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str | None = None  # None: cuda if present, else cpu
    block_size: int = 16  # tokens per KV block (vLLM, TGI)
    kv_cache_memory: int | None = None  # bytes for the KV cache; None: a share of free memory
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's context, capped by the cache
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    seed: int = 0  # seeds the per-request generators of unseeded requests
    speculative: SpeculativeConfig | None = None  # None: one token per decode step, as always
    fp32_logits: bool = True  # False: logits keep the model dtype's rounding (benchmarks compare the two)


def default_kv_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_GPU_KV_FRACTION)
    lo, hi = DEFAULT_CPU_KV_BOUNDS
    return int(min(max(_mem_available() * DEFAULT_CPU_KV_FRACTION, lo), hi))


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3
