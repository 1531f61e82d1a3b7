"""Causal attention over variable-length sequences packed into one token dimension.

Sequence i owns queries q[cu_q[i]:cu_q[i+1]] and keys/values k[cu_k[i]:cu_k[i+1]]; its
queries are the LAST len_q positions of its len_k keys, which covers full prefill
(len_q == len_k), chunked prefill on a cache and decode (len_q == 1) with one rule.
GQA: query head h reads KV head h // (Hq // Hk). An optional sliding window hides keys
`window` or more positions behind the query (Mistral v0.1); an optional soft-cap bounds
scores to (-softcap, softcap) with tanh before the softmax (Gemma 2).

The paged-cache variant (block tables) arrives with the engine and is specified
against this reference.
"""

import torch
import torch.nn.functional as F

from .dispatch import use_fast_path


def _sdpa(q, k, v, **kwargs):
    """SDPA on [H, T, D] tensors, given a batch dim: torch's fused CPU kernel only serves 4-D
    inputs (3-D falls back to the math path, 7x slower in bf16 here)."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], **kwargs)[0]


def attend_one(
    qi: torch.Tensor, ki: torch.Tensor, vi: torch.Tensor, scale: float, window: int | None
) -> torch.Tensor:
    """One sequence on SDPA: qi [Hq, Tq, D] are the last Tq of ki, vi [Hk, Tk, D] -> [Hq, Tq, D].

    SDPA's is_causal aligns the diagonal top-left, right only when Tq == Tk; a single query
    sees every key; anything else (chunks on a cache, windows) takes the explicit mask."""
    len_q, len_k = qi.shape[1], ki.shape[1]
    if window is None and len_q == len_k:
        return _sdpa(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
    if window is None and len_q == 1:
        return _sdpa(qi, ki, vi, scale=scale, enable_gqa=True)
    mask = _mask(len_q, len_k, window, qi.device)  # [Tq, Tk], bottom-right aligned
    return _sdpa(qi, ki, vi, attn_mask=mask, scale=scale, enable_gqa=True)


def _mask(len_q: int, len_k: int, window: int | None, device) -> torch.Tensor:
    """[len_q, len_k] bool, True where the query may attend the key."""
    q_pos = torch.arange(len_k - len_q, len_k, device=device)[:, None]
    k_pos = torch.arange(len_k, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def varlen_attention_ref(
    q: torch.Tensor,  # [N, Hq, D]
    k: torch.Tensor,  # [M, Hk, D]
    v: torch.Tensor,  # [M, Hk, D]
    cu_seqlens_q: list[int],
    cu_seqlens_k: list[int],
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The spec: explicit softmax(cap(q k^T * scale) + mask) v in fp32, one sequence at a time."""
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]
        qi = q[q0:q1].float().transpose(0, 1)  # [Hq, Tq, D]
        ki = k[k0:k1].float().transpose(0, 1).repeat_interleave(group, 0)  # [Hq, Tk, D]
        vi = v[k0:k1].float().transpose(0, 1).repeat_interleave(group, 0)  # [Hq, Tk, D]
        scores = (qi @ ki.transpose(1, 2)) * scale  # [Hq, Tq, Tk]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~_mask(q1 - q0, k1 - k0, sliding_window, q.device), float("-inf"))
        out[q0:q1] = (scores.softmax(-1) @ vi).transpose(0, 1).to(q.dtype)  # [Tq, Hq, D]
    return out


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: list[int],
    cu_seqlens_k: list[int],
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Same contract as varlen_attention_ref, on torch's fused SDPA (flash/memory-efficient).
    SDPA has no soft-cap: soft-capped attention runs the reference."""
    if not use_fast_path() or softcap is not None:
        return varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window, softcap)
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]
        qi = q[q0:q1].transpose(0, 1)  # [Hq, Tq, D]
        ki = k[k0:k1].transpose(0, 1)  # [Hk, Tk, D]
        vi = v[k0:k1].transpose(0, 1)
        out[q0:q1] = attend_one(qi, ki, vi, scale, sliding_window).transpose(0, 1)
    return out
