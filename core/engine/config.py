"""EngineConfig and the KV-cache sizing rule."""

from dataclasses import dataclass

import torch

from ..models.aliases import DEFAULT_MODEL

DEFAULT_CPU_KV_FRACTION = 0.10  # of available RAM, when --kv-cache-memory is not given
DEFAULT_CPU_KV_BOUNDS = (256 * 1024**2, 4 * 1024**3)
DEFAULT_GPU_KV_FRACTION = 0.80  # of free device memory after the weights are loaded


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
