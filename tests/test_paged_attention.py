"""Paged KV cache kernels against their references, and the references against varlen attention.

paged_attention_ref is specified as "gather through the block table, then
varlen_attention_ref"; here that is checked against keys the test lays out itself, through
shuffled block tables whose padding and whose unowned cache entries hold junk.
"""

import zlib

import pytest
import torch

from llmtool.kernels import (
    paged_attention,
    paged_attention_ref,
    plan_paged_attention,
    varlen_attention_ref,
    write_kv,
    write_kv_ref,
)

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # atol of the fast path vs the reference
HUGE = 1e4  # junk scale: a key this large would swamp every real score if it leaked in

SHAPES = {
    # name: (len_q per sequence, seq_len per sequence); seq_len counts the new tokens too
    "decode": ([1, 1, 1, 1, 1], [1, 2, 16, 17, 40]),
    "prefill": ([1, 5, 16, 33], [1, 5, 16, 33]),
    "chunked": ([3, 7, 2], [10, 23, 40]),
    "mixed": ([7, 1, 4, 1, 16, 1], [7, 20, 30, 1, 16, 5]),  # prefill, decode, chunk on a cache
}
HEADS = {"gqa-6-2": (6, 2), "gqa-9-3": (9, 3), "mha-4-4": (4, 4)}
HEAD_DIM = 32


def fast_paged_attention(
    q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, sliding_window=None
):
    """The fast op behind the reference's signature: plan the step, then attend."""
    plan = plan_paged_attention(block_tables, cu_seqlens_q, seq_lens, k_cache.shape[1], sliding_window)
    return paged_attention(q, k_cache, v_cache, plan, scale)


def seed_of(*params) -> int:
    # Fresh inputs per case, yet the same on every run, so a failure reproduces.
    return zlib.crc32(repr(params).encode())


def paged_inputs(shape, heads, block_size, dtype, seed, junk=True, table_dtype=torch.long):
    """q, contiguous k/v with their cu_seqlens, and the same k/v scattered into a paged cache.

    Blocks are handed out in shuffled order, so a sequence's blocks are neither contiguous
    nor ascending. With junk=True every cache entry no sequence owns (spare blocks, the tail
    of partial last blocks) holds huge random values, and block-table padding holds other
    sequences' block ids, -1 and out-of-range ids; junk=False zeroes both, same draws otherwise.
    """
    lens_q, seq_lens = shape
    num_heads, num_kv_heads = heads
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few spare blocks
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.randint(-1, num_blocks + 5, (len(seq_lens), max(blocks_per_seq) + 2), generator=g)
    if not junk:
        tables.zero_()
    slots, start = [], 0
    for i, (seq_len, nb) in enumerate(zip(seq_lens, blocks_per_seq, strict=True)):
        tables[i, :nb] = order[start : start + nb]
        start += nb
        pos = torch.arange(seq_len)
        slots.append(tables[i, pos // block_size] * block_size + pos % block_size)
    slots = torch.cat(slots)  # [M]
    q = torch.randn(sum(lens_q), num_heads, HEAD_DIM, generator=g).to(dtype)  # [N, Hq, D]
    k = torch.randn(len(slots), num_kv_heads, HEAD_DIM, generator=g).to(dtype)  # [M, Hk, D]
    v = torch.randn(len(slots), num_kv_heads, HEAD_DIM, generator=g).to(dtype)  # [M, Hk, D]
    cache_shape = (num_blocks, block_size, num_kv_heads, HEAD_DIM)
    caches = [HUGE * torch.randn(cache_shape, generator=g) for _ in range(2)]
    k_cache, v_cache = (c.to(dtype) if junk else torch.zeros(cache_shape, dtype=dtype) for c in caches)
    k_cache.view(-1, num_kv_heads, HEAD_DIM)[slots] = k
    v_cache.view(-1, num_kv_heads, HEAD_DIM)[slots] = v
    cu_q, cu_k = [0], [0]
    for len_q, seq_len in zip(lens_q, seq_lens, strict=True):
        cu_q.append(cu_q[-1] + len_q)
        cu_k.append(cu_k[-1] + seq_len)
    paged = (k_cache, v_cache, tables.to(table_dtype), cu_q, list(seq_lens))
    return q, k, v, cu_q, cu_k, paged


cases = pytest.mark.parametrize
with_shapes = cases("shape", SHAPES.values(), ids=SHAPES.keys())
with_heads = cases("heads", HEADS.values(), ids=HEADS.keys())
with_blocks = cases("block_size", [16, 4], ids=["bs16", "bs4"])
with_window = cases("window", [None, 3], ids=["full", "window3"])


# ----------------------------------------------------------------------------- the spec


@with_window
@with_blocks
@with_heads
@with_shapes
def test_reference_is_varlen_attention_on_contiguous_keys(shape, heads, block_size, window):
    q, k, v, cu_q, cu_k, paged = paged_inputs(
        shape, heads, block_size, torch.float32, seed_of(shape, heads, block_size, window, "ref")
    )
    scale = HEAD_DIM**-0.5
    expected = varlen_attention_ref(q, k, v, cu_q, cu_k, scale, window)
    got = paged_attention_ref(q, *paged, scale, window)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- fast vs reference


@cases("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@with_window
@with_blocks
@with_heads
@with_shapes
def test_paged_attention_matches_reference(shape, heads, block_size, window, dtype):
    q, _, _, _, _, paged = paged_inputs(
        shape, heads, block_size, dtype, seed_of(shape, heads, block_size, window, dtype)
    )
    scale = HEAD_DIM**-0.5
    expected = paged_attention_ref(q, *paged, scale, window)
    got = fast_paged_attention(q, *paged, scale, window)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got, expected, atol=TOLERANCE[dtype], rtol=0)


@cases("attn", [paged_attention_ref, fast_paged_attention], ids=lambda f: f.__name__)
@cases("table_dtype", [torch.int32, torch.long], ids=["int32", "int64"])
@with_window
@cases("shape", [SHAPES["mixed"], SHAPES["decode"]], ids=["mixed", "decode"])
def test_junk_outside_the_sequences_changes_nothing(shape, window, table_dtype, attn):
    seed = seed_of(shape, window, table_dtype, "junk")
    results = []
    for junk in (False, True):
        q, _, _, _, _, paged = paged_inputs(shape, (6, 2), 4, torch.bfloat16, seed, junk, table_dtype)
        results.append(attn(q, *paged, 0.2, window))
    assert torch.isfinite(results[1]).all()
    torch.testing.assert_close(results[1], results[0], atol=0, rtol=0)


# ----------------------------------------------------------------------------- writes


@cases("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@with_blocks
@cases("num_padding", [0, 3, 9], ids=["no-pad", "pad3", "all-pad"])
def test_write_kv_matches_reference(num_padding, block_size, dtype):
    g = torch.Generator().manual_seed(seed_of(num_padding, block_size, dtype))
    num_blocks, num_kv_heads, num_tokens = 7, 3, 9
    cache_shape = (num_blocks, block_size, num_kv_heads, HEAD_DIM)
    k_cache, v_cache = (torch.randn(cache_shape, generator=g).to(dtype) for _ in range(2))
    k, v = (torch.randn(num_tokens, num_kv_heads, HEAD_DIM, generator=g).to(dtype) for _ in range(2))
    slot_mapping = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]  # [N], distinct
    slot_mapping[torch.randperm(num_tokens, generator=g)[:num_padding]] = -1

    ref_k, ref_v, fast_k, fast_v = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    write_kv_ref(ref_k, ref_v, k, v, slot_mapping)
    write_kv(fast_k, fast_v, k, v, slot_mapping)
    assert torch.equal(fast_k, ref_k) and torch.equal(fast_v, ref_v)

    # The reference against the layout itself: kept tokens land in their slots, nothing else moves.
    keep = slot_mapping >= 0
    expected_k, expected_v = (
        k_cache.clone().view(-1, num_kv_heads, HEAD_DIM),
        v_cache.clone().view(-1, num_kv_heads, HEAD_DIM),
    )
    expected_k[slot_mapping[keep]] = k[keep]
    expected_v[slot_mapping[keep]] = v[keep]
    assert torch.equal(ref_k, expected_k.view(cache_shape)) and torch.equal(
        ref_v, expected_v.view(cache_shape)
    )


def test_native_cpu_kernel_is_built():
    """CI has a compiler and ninja: the native decode kernel must build there, or the fast
    path above would silently be the SDPA fallback and the native one never tested."""
    from llmtool.kernels.cpu_ops import cpu_ops

    assert cpu_ops() is not None


@cases("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@with_window
@with_heads
def test_sdpa_decode_fallback_matches_reference(monkeypatch, heads, window, dtype):
    """Without native kernels (no compiler, LLMTOOL_CPU_KERNELS=0) decode runs on SDPA."""
    import importlib

    # The package re-exports a function of the module's name: fetch the module itself.
    module = importlib.import_module("llmtool.kernels.paged_attention")
    monkeypatch.setattr(module, "cpu_ops", lambda: None)
    for name in ("decode", "mixed"):
        shape = SHAPES[name]
        q, _, _, _, _, paged = paged_inputs(shape, heads, 16, dtype, seed_of(shape, heads, 16, window, dtype))
        scale = HEAD_DIM**-0.5
        expected = paged_attention_ref(q, *paged, scale, window)
        torch.testing.assert_close(
            fast_paged_attention(q, *paged, scale, window), expected, atol=TOLERANCE[dtype], rtol=0
        )


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(9, 3), (8, 2), (6, 6), (12, 3), (10, 2)], ids=lambda h: f"{h[0]}-{h[1]}")
@pytest.mark.parametrize("window", [None, 5])
def test_native_decode_bf16(heads, window, head_dim):
    """head_dim 64 in bf16 takes the AVX512-BF16 path on CPUs that have it (groups up to 4;
    10/2 = 5 takes the generic loop): spans across 16-token chunks, 1-token sequences.
    head_dim 128 has a scale that is no power of two: it must not round q * scale to bf16."""
    from llmtool.kernels.cpu_ops import cpu_ops

    num_heads, num_kv_heads = heads
    g = torch.Generator().manual_seed(num_heads * 10 + (window or 0))
    lens, block_size = [1, 15, 16, 17, 33, 100, 250], 16
    num_blocks = sum(-(-n // block_size) for n in lens) + 5
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).bfloat16()
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).bfloat16()
    perm = torch.randperm(num_blocks, generator=g).tolist()
    width = max(-(-n // block_size) for n in lens)
    tables, i = [], 0
    for n in lens:
        used = -(-n // block_size)
        tables.append(perm[i : i + used] + [0] * (width - used))
        i += used
    block_tables = torch.tensor(tables)
    q = torch.randn(len(lens), num_heads, head_dim, generator=g).bfloat16()
    cu = list(range(len(lens) + 1))
    expected = paged_attention_ref(
        q.float(), k_cache.float(), v_cache.float(), block_tables, cu, lens, 0.125, window
    )
    got = cpu_ops().paged_decode_attention(
        q, k_cache, v_cache, block_tables, torch.tensor(lens), 0.125, window or 0
    )
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=0)
