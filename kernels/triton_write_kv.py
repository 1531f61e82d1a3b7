"""Triton kernel (CUDA; the interpreter in tests) writing new K/V rows into the paged cache.

One program per token: slot -1 (padding) is skipped in place, so no host-side filter or
sync. Spec: kernels/paged_attention.py:write_kv_ref. Exact (a copy).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, row_size, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    slot = tl.load(slot_ptr + n).to(tl.int64)
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        mask = offs < row_size
        src = n.to(tl.int64) * row_size + offs
        dst = slot * row_size + offs
        tl.store(k_cache_ptr + dst, tl.load(k_ptr + src, mask=mask), mask=mask)
        tl.store(v_cache_ptr + dst, tl.load(v_ptr + src, mask=mask), mask=mask)


def write_kv_triton(
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D], contiguous
    v_cache: torch.Tensor,
    k: torch.Tensor,  # [N, Hk, D]
    v: torch.Tensor,
    slot_mapping: torch.Tensor,  # [N], -1 = padding
) -> None:
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    row_size = k_cache.shape[2] * k_cache.shape[3]
    _write_kv_kernel[(num_tokens,)](
        k.contiguous(),
        v.contiguous(),
        k_cache,
        v_cache,
        slot_mapping,
        row_size,
        BLOCK=triton.next_power_of_2(row_size),
    )
