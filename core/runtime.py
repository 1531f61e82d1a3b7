"""Runtime choices made once per process: device, dtype and CPU threads.

bf16 is 2-3x faster than fp32 on CPUs with AVX512_BF16 (see REFERENCE.md), so it is
the default there; elsewhere fp32. Callers can always override with an explicit dtype.
"""

import functools
import os

import torch

from .errors import UsageError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str | None, device: torch.device | None = None) -> torch.dtype:
    """Map a user dtype name ("auto", "bf16", "fp32", ...) to a torch dtype."""
    device = device or default_device()
    if name is None or name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if "avx512_bf16" in cpu_flags() else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype '{name}': use auto, bf16, fp16 or fp32") from None


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def configure_threads() -> int:
    """Use every core this process may run on (torch defaults to physical cores only)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cache_dir() -> "os.PathLike[str]":
    """Where llmtool caches derived files (e.g. tokenizers converted from GGUF metadata)."""
    from pathlib import Path

    if os.environ.get("LLMTOOL_CACHE_DIR"):
        return Path(os.environ["LLMTOOL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmtool"
