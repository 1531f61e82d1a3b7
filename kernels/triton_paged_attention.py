"""Triton kernel (CUDA; the interpreter in tests): attention over the paged KV cache, one
kernel for decode, prefill and chunked prefill.

Grid (sequence, KV head, row tile). A tile's rows are (query token, query head of this KV
head's group) pairs, flattened: decode's one token fills a tile with the G heads that share
the KV head, so each key and value row is read once per KV head (GQA without repeating K/V),
and prefill's tokens fill tiles of BLOCK_M / G tokens. Keys are visited one cache block at a
time through the block table, with an online softmax (fp32) and the causal / sliding-window
mask on absolute positions: query t of a sequence with len_q new and seq_len total tokens
sits at seq_len - len_q + t. Spec: kernels/paged_attention.py:paged_attention_ref.
"""

import os

import torch
import triton
import triton.language as tl


def interpreter_dot_fp32(dtype: torch.dtype) -> bool:
    """Triton 3.9's interpreter computes tl.dot on bf16/fp16 operands wrongly (garbage, checked
    here), so under TRITON_INTERPRET=1 the kernels widen dot operands to fp32 first. A product
    of two bf16 values is exact in fp32, so this changes only the accumulation order that a
    GPU's tensor cores would use; every other line of the kernel is the one the GPU runs."""
    return dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _paged_attention_kernel(
    q_ptr,  # [N, Hq, D]
    k_cache_ptr,  # [num_blocks, block_size, Hk, D]
    v_cache_ptr,
    out_ptr,  # [N, Hq, D]
    block_tables_ptr,  # [B, max_blocks]
    cu_q_ptr,  # [B + 1]
    seq_lens_ptr,  # [B]
    scale,
    window,
    stride_qn,
    stride_qh,
    stride_on,
    stride_oh,
    stride_bt,
    stride_kb,
    stride_kt,
    stride_kh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    len_q = tl.load(cu_q_ptr + b + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + b)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] flattened (token, head in group)
    t = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = t < len_q
    q_pos = seq_len - len_q + t  # [BM] absolute positions
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_off = (q_start + t).to(tl.int64)[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BM, BD]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys this tile can see: up to its last query's position (causal), from the first
    # query's window start (rounded down to a cache block).
    last_t = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, len_q - 1)
    kv_end = seq_len - len_q + last_t + 1
    kv_start = 0
    if HAS_WINDOW:
        first_pos = seq_len - len_q + (tile * BLOCK_M) // GROUP
        kv_start = tl.maximum(first_pos - window + 1, 0) // BLOCK_SIZE * BLOCK_SIZE
    j = tl.arange(0, BLOCK_SIZE)
    for start in range(kv_start, kv_end, BLOCK_SIZE):
        phys = tl.load(block_tables_ptr + b * stride_bt + start // BLOCK_SIZE).to(tl.int64)
        k_pos = start + j  # [BS]
        k_ok = k_pos < kv_end
        kv_off = phys * stride_kb + j[:, None] * stride_kt + kvh * stride_kh + d[None, :]
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)  # [BS, BD]
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        if DOT_FP32:  # exact bf16 products either way; see interpreter_dot_fp32()
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale  # [BM, BS]
        else:
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        allowed = (k_pos[None, :] <= q_pos[:, None]) & k_ok[None, :]
        if HAS_WINDOW:
            allowed = allowed & (q_pos[:, None] - k_pos[None, :] < window)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_off = (q_start + t).to(tl.int64)[:, None] * stride_on + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_off, out.to(q.dtype), mask=row_ok[:, None] & d_ok[None, :])


def paged_attention_triton(
    q: torch.Tensor,  # [N, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32 on q's device
    seq_lens: torch.Tensor,  # [B] int32
    max_len_q: int,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    q = q if q.stride(2) == 1 else q.contiguous()
    out = torch.empty_like(q)
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or q.shape[0] == 0:
        return out
    # tl.dot wants >= 16 rows; decode tiles hold the G heads of one token, padded.
    block_m = max(16, min(64, triton.next_power_of_2(max_len_q * group)))
    grid = (num_seqs, num_kv_heads, triton.cdiv(max_len_q * group, block_m))
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, block_tables, cu_seqlens_q, seq_lens,
        scale, sliding_window or 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m, BLOCK_SIZE=block_size, HAS_WINDOW=sliding_window is not None,
        DOT_FP32=interpreter_dot_fp32(q.dtype),
    )  # fmt: skip
    return out
