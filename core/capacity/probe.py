"""Measure this machine's ceilings (memory bandwidth, bf16 and int8 matmul peaks) so a
calibrated CPU profile scales real numbers, as a GPU's datasheet figures are scaled.

A couple of seconds of torch micro-benchmarks, best of a few runs (noise only slows).
Imports torch lazily: the rest of capacity planning stays torch-free.
"""

import os
import platform
import time

from .catalog import GPUSpec


def _best_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm up: page faults, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def probe_cpu(name: str = "cpu-local", kv_memory_gib: float = 8.0) -> GPUSpec:
    import torch

    from ..runtime import configure_threads

    configure_threads()  # every core the engine would use
    src = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MiB: far beyond the caches
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() * 4 / copy_s  # read + write, as REFERENCE.md counts it

    n = 1024
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    bf16 = 2 * n**3 / _best_seconds(lambda: a @ b)
    ai = torch.randint(-8, 8, (n, n), dtype=torch.int8)
    try:
        int8 = 2 * n**3 / _best_seconds(lambda: torch._int_mm(ai, ai))
    except RuntimeError:  # no int8 GEMM on this build: weight-only int8 then computes in bf16
        int8 = bf16
    cpu = platform.processor() or platform.machine()
    return GPUSpec(
        name=name,
        memory_bytes=int(kv_memory_gib * 2**30),
        hbm_bandwidth=bandwidth,
        bf16_flops=bf16,
        fp8_flops=None,
        int8_ops=int8,
        link_bandwidth=1e9,  # one device: no tensor parallelism to cost
        price_per_hour=0.0,
        source=f"measured on this host ({cpu}, {os.cpu_count()} CPUs, torch {torch.__version__})",
    )
