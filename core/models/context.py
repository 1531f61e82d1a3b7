"""Attention contexts: how a forward pass finds the keys and values for its queries.

The model hands each layer's fresh (q, k, v) to `ctx.attend` and never knows whether
keys live nowhere (scoring a whole text), in a contiguous per-sequence cache (simple
generation), or in the engine's paged cache. Adding a cache layout adds a context,
not a branch in the model.
"""

from typing import Protocol

import torch

from ...kernels import varlen_attention
from .spec import ModelSpec


class AttentionContext(Protocol):
    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, Hq, D], k/v [N, Hk, D] for this step's tokens -> [N, Hq, D]."""
        ...


def layer_attention(spec: ModelSpec) -> list[tuple[float, int | None, float | None]]:
    """(scale, window, softcap) of each layer, what every context hands the kernels."""
    out = []
    for i in range(spec.num_layers):
        a = spec.layer_attention(i)
        out.append((a.scale, a.window, a.softcap))
    return out


class PrefillContext:
    """No cache: each packed sequence attends only to its own tokens (scoring, perplexity)."""

    def __init__(self, seq_lens: list[int], spec: ModelSpec):
        self.cu_seqlens = _cumsum(seq_lens)
        self.layers = layer_attention(spec)

    def attend(self, layer_idx, q, k, v):
        cu = self.cu_seqlens
        return varlen_attention(q, k, v, cu, cu, *self.layers[layer_idx])


class ContiguousKVCache:
    """One preallocated [max_len] K/V buffer per sequence and layer: enough for simple
    generation of a few sequences; the engine's paged cache replaces it for serving."""

    def __init__(self, spec: ModelSpec, num_seqs: int, max_len: int, dtype: torch.dtype, device):
        shape = (spec.num_layers, num_seqs, max_len, spec.num_kv_heads, spec.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # [L, B, T, Hk, D]
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.seq_lens = [0] * num_seqs
        self.max_len = max_len
        self.layers = layer_attention(spec)

    def step(self, new_lens: list[int]) -> "_CacheStep":
        """A context for one forward pass that appends new_lens[i] tokens to sequence i."""
        for start, n in zip(self.seq_lens, new_lens, strict=True):
            if start + n > self.max_len:
                raise ValueError(f"sequence would grow past the cache's {self.max_len} tokens")
        return _CacheStep(self, list(self.seq_lens), new_lens)

    def commit(self, new_lens: list[int]) -> None:
        self.seq_lens = [s + n for s, n in zip(self.seq_lens, new_lens, strict=True)]


class _CacheStep:
    def __init__(self, cache: ContiguousKVCache, starts: list[int], new_lens: list[int]):
        self.cache, self.starts, self.new_lens = cache, starts, new_lens
        self.cu_q = _cumsum(new_lens)
        self.cu_k = _cumsum([s + n for s, n in zip(starts, new_lens, strict=True)])

    def attend(self, layer_idx, q, k, v):
        c = self.cache
        keys, values = [], []
        for b, (start, n) in enumerate(zip(self.starts, self.new_lens, strict=True)):
            q0 = self.cu_q[b]
            c.k[layer_idx, b, start : start + n] = k[q0 : q0 + n]
            c.v[layer_idx, b, start : start + n] = v[q0 : q0 + n]
            keys.append(c.k[layer_idx, b, : start + n])
            values.append(c.v[layer_idx, b, : start + n])
        k_all = keys[0] if len(keys) == 1 else torch.cat(keys)  # [sum(len_k), Hk, D]
        v_all = values[0] if len(values) == 1 else torch.cat(values)
        return varlen_attention(q, k_all, v_all, self.cu_q, self.cu_k, *c.layers[layer_idx])


def _cumsum(lens: list[int]) -> list[int]:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return out
