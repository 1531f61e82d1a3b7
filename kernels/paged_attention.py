"""Attention over a paged KV cache, and the writes that fill it.

Per layer the cache is two tensors k_cache, v_cache [num_blocks, block_size, Hk, D]. A
sequence's keys live in the blocks its block table names: position p sits in slot
block_table[p // block_size] * block_size + p % block_size of the flattened cache. The
block manager (core/engine) decides the tables and slots; this module only reads and
writes through them, so it knows nothing of allocation, prefix sharing or eviction.

The semantics are kernels.attention's varlen attention (queries are the LAST len_q of a
sequence's seq_len positions; causal; GQA; optional sliding window) after gathering each
sequence's first seq_len keys through its block table: paged_attention_ref does exactly
that, so the two specs cannot drift. Padding entries of a block table, unused blocks and
the unused tail of a sequence's last block may hold anything; none of it reaches a score.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import attend_one, varlen_attention_ref
from .cpu_ops import cpu_ops
from .dispatch import use_fast_path, use_triton


def write_kv_ref(
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    k: torch.Tensor,  # [N, Hk, D]
    v: torch.Tensor,  # [N, Hk, D]
    slot_mapping: torch.Tensor,  # [N] long, -1 = padding token, not written
) -> None:
    """The spec: token n's key and value go to slot slot_mapping[n], one token at a time."""
    block_size = k_cache.shape[1]
    for n, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = k[n]
        v_cache[slot // block_size, slot % block_size] = v[n]


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    has_padding: bool = True,
) -> None:
    """Same contract as write_kv_ref: one index_copy_ per cache on its flattened view (CPU),
    a Triton kernel skipping -1 slots in place (CUDA). has_padding=False promises no -1 slots
    (the engine never pads) and skips the filter."""
    if not use_fast_path():
        return write_kv_ref(k_cache, v_cache, k, v, slot_mapping)
    if use_triton(k) and k_cache.is_contiguous():
        from .triton_write_kv import write_kv_triton

        return write_kv_triton(k_cache, v_cache, k, v, slot_mapping)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if has_padding:
        # index_copy_ has no "skip" index, so padding tokens are dropped first. The boolean
        # select costs one host sync on CUDA; a fused kernel can skip -1 slots in place later.
        keep = slot_mapping >= 0  # [N]
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
    # view(), not reshape(): the cache must be written in place, never through a copy.
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def _gather_sequence(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[seq_len, Hk, D]: one sequence's first seq_len entries, reading only its own blocks."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache.index_select(0, block_table[:num_blocks])  # [nb, block_size, Hk, D]
    return blocks.flatten(0, 1)[:seq_len]


def paged_attention_ref(
    q: torch.Tensor,  # [N, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int, padding entries arbitrary
    cu_seqlens_q: list[int],  # [B + 1]
    seq_lens: list[int],  # [B] keys per sequence, the new tokens (already written) included
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The spec: gather every sequence's keys contiguously, then varlen_attention_ref."""
    block_size = k_cache.shape[1]
    slots = []
    for i, seq_len in enumerate(seq_lens):
        pos = torch.arange(seq_len, device=q.device)  # [T_i]
        slots.append(block_tables[i, pos // block_size].long() * block_size + pos % block_size)
    slots = torch.cat(slots)  # [M]
    k = k_cache.flatten(0, 1)[slots]  # [M, Hk, D]
    v = v_cache.flatten(0, 1)[slots]  # [M, Hk, D]
    cu_seqlens_k = [0]
    for seq_len in seq_lens:
        cu_seqlens_k.append(cu_seqlens_k[-1] + seq_len)
    return varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window, softcap)


@dataclass(frozen=True)
class PagedAttentionPlan:
    """Index tensors for one step, built once and shared by every layer's attention call."""

    block_size: int
    cu_seqlens_q: list[int]  # [B + 1]
    seq_lens: list[int]  # [B]
    block_tables: torch.Tensor  # [B, max_blocks]
    sliding_window: int | None
    decode_ids: list[int]  # sequences with one query, attended together in one batch
    decode_rows: torch.Tensor | None  # [B_d] their query rows in q
    decode_blocks: torch.Tensor | None  # [B_d * nb] block ids to gather, padding -> the seq's own block
    decode_valid: torch.Tensor | None  # [B_d, 1, 1, nb * block_size] bool, keys each query may see
    decode_tables: torch.Tensor | None  # [B_d, max_blocks] long, for the native kernel
    decode_lens: torch.Tensor | None  # [B_d] long
    is_pure_decode: bool  # every sequence decodes: output rows equal decode rows, no scatter
    cu_seqlens_q_t: torch.Tensor | None = None  # [B + 1] int32 on the device, Triton only
    seq_lens_t: torch.Tensor | None = None  # [B] int32 on the device, Triton only
    max_len_q: int = 1


def plan_paged_attention(
    block_tables: torch.Tensor,
    cu_seqlens_q: list[int],
    seq_lens: list[int],
    block_size: int,
    sliding_window: int | None = None,
) -> PagedAttentionPlan:
    device = block_tables.device
    num_seqs = len(seq_lens)
    decode_ids = [i for i in range(num_seqs) if cu_seqlens_q[i + 1] - cu_seqlens_q[i] == 1]
    rows = blocks = valid = tables = lens = None
    if decode_ids:
        lens = torch.tensor([seq_lens[i] for i in decode_ids], device=device)  # [B_d]
        num_blocks = -(-int(lens.max()) // block_size)
        tables = block_tables[decode_ids, :num_blocks].long()  # [B_d, nb]
        # Table padding may name any block (or none): re-read the sequence's first block
        # instead, so only blocks it owns are touched; the mask hides them anyway.
        used = torch.arange(num_blocks, device=device)[None, :] < (-(-lens // block_size))[:, None]
        tables = torch.where(used, tables, tables[:, :1]).contiguous()  # [B_d, nb]
        blocks = tables.flatten()  # [B_d * nb]
        pos = torch.arange(num_blocks * block_size, device=device)[None, :]  # [1, L]
        visible = pos < lens[:, None]  # [B_d, L]
        if sliding_window is not None:
            visible &= pos > (lens[:, None] - 1 - sliding_window)
        valid = visible[:, None, None, :]
        rows = torch.tensor([cu_seqlens_q[i] for i in decode_ids], device=device)
    cu_t = lens_t = None
    if use_triton(block_tables):  # built once per step, shared by every layer's kernel call
        cu_t = torch.tensor(cu_seqlens_q, dtype=torch.int32, device=device)
        lens_t = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return PagedAttentionPlan(
        block_size=block_size,
        cu_seqlens_q=cu_seqlens_q,
        seq_lens=seq_lens,
        block_tables=block_tables,
        sliding_window=sliding_window,
        decode_ids=decode_ids,
        decode_rows=rows,
        decode_blocks=blocks,
        decode_valid=valid,
        decode_tables=tables,
        decode_lens=lens,
        is_pure_decode=len(decode_ids) == num_seqs,
        cu_seqlens_q_t=cu_t,
        seq_lens_t=lens_t,
        max_len_q=max((b - a for a, b in zip(cu_seqlens_q, cu_seqlens_q[1:], strict=False)), default=1),
    )


def _decode_attention(q, k_cache, v_cache, plan: PagedAttentionPlan, scale):
    """All one-query sequences in one SDPA call. q [B_d, Hq, D] -> [B_d, Hq, D].

    Whole blocks are gathered (rows of block_size*Hk*D values: several times faster than
    per-token gathers on CPU) and laid out [B_d, Hk, L, D] so SDPA reads them contiguously.
    GQA without expanding K/V: the G query heads sharing a KV head become G "query
    positions" of that head, all at the same position, under the same key mask.
    """
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float32)
        and (ops := cpu_ops()) is not None
    ):
        window = plan.sliding_window or 0
        return ops.paged_decode_attention(
            q.contiguous(), k_cache, v_cache, plan.decode_tables, plan.decode_lens, scale, window
        )
    num_rows, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    length = plan.decode_valid.shape[-1]

    def gather(cache):
        flat = cache.view(cache.shape[0], -1).index_select(0, plan.decode_blocks)  # [B_d * nb, bs*Hk*D]
        return (
            flat.view(num_rows, length, num_kv_heads, head_dim).transpose(1, 2).contiguous()
        )  # [B_d, Hk, L, D]

    k, v = gather(k_cache), gather(v_cache)
    qg = q.view(num_rows, num_kv_heads, group, head_dim)  # [B_d, Hk, G, D]
    out = F.scaled_dot_product_attention(
        qg, k, v, attn_mask=plan.decode_valid, scale=scale
    )  # [B_d, Hk, G, D]
    return out.reshape(num_rows, num_heads, head_dim)


def paged_attention(
    q: torch.Tensor,  # [N, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,
    plan: PagedAttentionPlan,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Same semantics as paged_attention_ref, on torch's SDPA, with indices from `plan`.

    Decode rows (len_q == 1), the bulk of steady-state serving, share one SDPA call per
    layer; prefill and chunked-prefill sequences run one at a time. Python work is per
    sequence, never per token. On CUDA one Triton kernel serves decode and prefill alike.
    """
    if not use_fast_path() or softcap is not None:  # no fast kernel soft-caps yet (Gemma 2)
        return paged_attention_ref(
            q, k_cache, v_cache, plan.block_tables, plan.cu_seqlens_q, plan.seq_lens, scale, plan.sliding_window,
            softcap,
        )  # fmt: skip
    block_size = k_cache.shape[1]
    if plan.cu_seqlens_q_t is not None and use_triton(q) and block_size >= 16 and block_size & (block_size - 1) == 0:
        from .triton_paged_attention import paged_attention_triton

        return paged_attention_triton(
            q, k_cache, v_cache, plan.block_tables, plan.cu_seqlens_q_t, plan.seq_lens_t,
            plan.max_len_q, scale, plan.sliding_window,
        )  # fmt: skip
    if plan.is_pure_decode:
        return _decode_attention(q, k_cache, v_cache, plan, scale)
    out = torch.empty_like(q)  # [N, Hq, D]
    if plan.decode_ids:
        out[plan.decode_rows] = _decode_attention(q[plan.decode_rows], k_cache, v_cache, plan, scale)
    cu, window = plan.cu_seqlens_q, plan.sliding_window
    for i, len_k in enumerate(plan.seq_lens):
        q0, len_q = cu[i], cu[i + 1] - cu[i]
        if len_q < 2:
            continue
        qi = q[q0 : q0 + len_q].transpose(0, 1)  # [Hq, Tq, D]
        ki = _gather_sequence(k_cache, plan.block_tables[i], len_k).transpose(0, 1)  # [Hk, Tk, D]
        vi = _gather_sequence(v_cache, plan.block_tables[i], len_k).transpose(0, 1)  # [Hk, Tk, D]
        o = attend_one(qi, ki, vi, scale, window)  # [Hq, Tq, D]
        out[q0 : q0 + len_q] = o.transpose(0, 1)  # [Tq, Hq, D]
    return out
