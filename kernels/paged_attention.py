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

import torch
import torch.nn.functional as F

from .attention import _mask, varlen_attention_ref


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
) -> None:
    """Same contract as write_kv_ref: one index_copy_ per cache on its flattened view."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    # index_copy_ has no "skip" index, so padding tokens are dropped first. The boolean
    # select costs one host sync on CUDA; a fused kernel can skip -1 slots in place later.
    keep = slot_mapping >= 0  # [N]
    slots = slot_mapping[keep]  # [N']
    # view(), not reshape(): the cache must be written in place, never through a copy.
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k[keep])
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v[keep])


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
    return varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window)


def _decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window):
    """All one-query sequences in one SDPA call over keys gathered into a padded batch.

    q [B_d, Hq, D], block_tables [B_d, max_blocks], seq_lens [B_d] long -> [B_d, Hq, D].
    """
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    # The one query sits at position seq_len - 1 and sees the last `span` keys; a window
    # shrinks the gather itself, not just the mask, so long contexts pay only for the window.
    span = seq_lens if sliding_window is None else seq_lens.clamp(max=sliding_window)  # [B_d]
    max_span = int(span.max())
    offsets = torch.arange(max_span, device=q.device)  # [L]
    # Padding re-reads the sequence's last real key instead of whatever lies past it: the
    # mask hides it anyway, and never touching unused slots or table padding keeps stale
    # (even non-finite) cache contents out of the scores.
    pos = (seq_lens - span)[:, None] + torch.minimum(offsets[None, :], span[:, None] - 1)  # [B_d, L]
    blocks = block_tables.gather(1, pos // block_size).long()  # [B_d, L]
    slots = (blocks * block_size + pos % block_size).flatten()  # [B_d * L]
    k = k_cache.view(-1, num_kv_heads * head_dim).index_select(0, slots)  # [B_d * L, Hk * D]
    v = v_cache.view(-1, num_kv_heads * head_dim).index_select(0, slots)
    k = k.view(-1, max_span, num_kv_heads, head_dim).transpose(1, 2)  # [B_d, Hk, L, D]
    v = v.view(-1, max_span, num_kv_heads, head_dim).transpose(1, 2)  # [B_d, Hk, L, D]
    visible = offsets[None, :] < span[:, None]  # [B_d, L]
    mask = visible[:, None, None, :]  # [B_d, 1, 1, L], broadcast over heads and the one query
    out = F.scaled_dot_product_attention(
        q[:, :, None, :], k, v, attn_mask=mask, scale=scale, enable_gqa=True
    )  # [B_d, Hq, 1, D]
    return out.squeeze(2)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: list[int],
    seq_lens: list[int],
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Same contract as paged_attention_ref, on torch's SDPA.

    Decode rows (len_q == 1) are the bulk of steady-state serving, so they share one SDPA
    call per layer; prefill and chunked-prefill sequences run one at a time, as in
    varlen_attention. Python work is per sequence, never per token.
    """
    num_seqs = len(seq_lens)
    lens_q = [cu_seqlens_q[i + 1] - cu_seqlens_q[i] for i in range(num_seqs)]
    decode_ids = [i for i in range(num_seqs) if lens_q[i] == 1]
    if decode_ids and len(decode_ids) == num_seqs:
        # Pure decode: row i is sequence i, so no scatter back is needed.
        lens = torch.tensor(seq_lens, device=q.device)
        return _decode_attention(q, k_cache, v_cache, block_tables, lens, scale, sliding_window)

    out = torch.empty_like(q)  # [N, Hq, D]
    if decode_ids:
        ids = torch.tensor(decode_ids, device=q.device)
        rows = torch.tensor([cu_seqlens_q[i] for i in decode_ids], device=q.device)
        lens = torch.tensor([seq_lens[i] for i in decode_ids], device=q.device)
        tables = block_tables.index_select(0, ids)
        out[rows] = _decode_attention(q[rows], k_cache, v_cache, tables, lens, scale, sliding_window)

    for i in range(num_seqs):
        len_q, len_k = lens_q[i], seq_lens[i]
        if len_q < 2:
            continue
        q0 = cu_seqlens_q[i]
        qi = q[q0 : q0 + len_q].transpose(0, 1)  # [Hq, Tq, D]
        ki = _gather_sequence(k_cache, block_tables[i], len_k).transpose(0, 1)  # [Hk, Tk, D]
        vi = _gather_sequence(v_cache, block_tables[i], len_k).transpose(0, 1)  # [Hk, Tk, D]
        if sliding_window is None and len_q == len_k:
            # SDPA's is_causal aligns the diagonal top-left, right only when Tq == Tk.
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
        else:
            mask = _mask(len_q, len_k, sliding_window, q.device)  # [Tq, Tk], bottom-right aligned
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale, enable_gqa=True)
        out[q0 : q0 + len_q] = o.transpose(0, 1)  # [Tq, Hq, D]
    return out
