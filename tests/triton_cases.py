"""Triton kernels against their torch references, on CPU under TRITON_INTERPRET=1; collected
through tests/test_triton_kernels.py, which makes sure the interpreter is on.

Small shapes (the interpreter runs each program in numpy), fresh random inputs, odd sizes:
partial cache blocks, 1-token sequences, head dims and widths that are not powers of two,
group tails, act-order g_idx. triton comes with the dev extras: a missing triton fails here
rather than skipping. Tolerances are stated per test.
"""

import pytest
import torch

from llmtool.core.quant.formats import pack_awq, pack_gptq
from llmtool.kernels.norm import add_rms_norm_ref, rms_norm_ref
from llmtool.kernels.paged_attention import paged_attention_ref, write_kv_ref
from llmtool.kernels.quant_linear import quant_linear_ref
from llmtool.kernels.rotary import apply_rotary_ref
from llmtool.kernels.triton_norm import add_rms_norm_triton
from llmtool.kernels.triton_paged_attention import paged_attention_triton
from llmtool.kernels.triton_quant_matmul import AWQ, GPTQ, quant_matmul_triton
from llmtool.kernels.triton_rotary import rotary_triton
from llmtool.kernels.triton_write_kv import write_kv_triton

# bf16 keeps 8 significant bits: one ulp is at most 2^-7 of the value. The interpreter's
# fp32 -> bf16 casts truncate (a GPU rounds to nearest), so each rounding may cost a whole ulp.
BF16_ULP = 2.0**-7


def _close(got, want, rtol, atol):
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_skips_padding_slots(dtype):
    g = torch.Generator().manual_seed(1)
    num_blocks, block_size, hk, d = 5, 4, 3, 10
    k_cache = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype)
    k, v = torch.randn(7, hk, d, generator=g).to(dtype), torch.randn(7, hk, d, generator=g).to(dtype)
    slots = torch.tensor([3, -1, 17, 0, 19, -1, 8])
    kr, vr = k_cache.clone(), v_cache.clone()
    write_kv_ref(kr, vr, k, v, slots)
    write_kv_triton(k_cache, v_cache, k, v, slots)
    assert torch.equal(k_cache, kr) and torch.equal(v_cache, vr)  # a copy: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm(dtype, with_residual):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 72, generator=g).to(dtype)  # 72: not a power of two
    res = torch.randn(5, 3, 72, generator=g).to(dtype) if with_residual else None
    w = (1 + 0.1 * torch.randn(72, generator=g)).to(dtype)
    out, res_out = add_rms_norm_triton(x, res, w, 1e-5)
    want, want_res = add_rms_norm_ref(x, res, w, 1e-5) if with_residual else (rms_norm_ref(x, w, 1e-5), x)
    # The add is one rounding, torch's (to nearest) on a GPU, a truncation in the interpreter.
    _close(res_out, want_res, rtol=0 if dtype == torch.float32 else BF16_ULP, atol=0)
    if dtype == torch.float32:
        _close(out, want, rtol=1e-5, atol=1e-5)
    else:  # the fp32 sum's order differs: the normalised value may round one ulp apart, twice
        _close(out, want, rtol=2 * BF16_ULP, atol=2 * BF16_ULP)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, 24, generator=g).to(dtype)  # half = 12, not a power of two
    angles = torch.randn(6, 12, generator=g)
    cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
    got, want = rotary_triton(x, cos, sin), apply_rotary_ref(x, cos, sin)
    if dtype == torch.float32:
        _close(got, want, rtol=1e-6, atol=1e-6)
    else:  # the reference rounds after each of its 3 ops, the kernel once
        _close(got, want, rtol=3 * BF16_ULP, atol=3 * BF16_ULP)


def _paged_case(seq_lens, lens_q, block_size, hq, hk, d, dtype, seed):
    """A shuffled paged cache holding every sequence's keys, and their queries."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    k_cache = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype)
    perm = torch.randperm(num_blocks, generator=g)
    width = max(blocks_per_seq) + 1
    tables = torch.full((len(seq_lens), width), 7, dtype=torch.int32)  # padding names any block
    used = 0
    for i, nb in enumerate(blocks_per_seq):
        tables[i, :nb] = perm[used : used + nb]
        used += nb
    cu = [0]
    for n in lens_q:
        cu.append(cu[-1] + n)
    q = torch.randn(cu[-1], hq, d, generator=g).to(dtype)
    return q, k_cache, v_cache, tables, cu


@pytest.mark.parametrize(
    "seq_lens, lens_q, block_size, hq, hk, d, window",
    [
        ([1, 5, 19], [1, 1, 1], 4, 6, 2, 16, None),  # decode: a 1-token sequence, partial blocks
        ([9, 16, 7], [9, 3, 1], 8, 9, 3, 24, None),  # prefill, a chunk on a cache, decode; G = 3
        ([21, 6], [4, 6], 4, 4, 4, 16, 5),  # sliding window, no GQA
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention(seq_lens, lens_q, block_size, hq, hk, d, window, dtype):
    q, k_cache, v_cache, tables, cu = _paged_case(seq_lens, lens_q, block_size, hq, hk, d, dtype, seed=4)
    want = paged_attention_ref(q, k_cache, v_cache, tables, cu, seq_lens, d**-0.5, window)
    got = paged_attention_triton(
        q,
        k_cache,
        v_cache,
        tables,
        torch.tensor(cu, dtype=torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        max(lens_q),
        d**-0.5,
        window,
    )
    if dtype == torch.float32:
        _close(got, want, rtol=1e-4, atol=1e-5)
    else:  # bf16 probabilities into the value product, then one rounding of the output
        _close(got, want, rtol=4 * BF16_ULP, atol=4 * BF16_ULP)


def _codes(out_f, in_f, num_groups, bits, g, act_order):
    q = torch.randint(0, 2**bits, (out_f, in_f), generator=g)
    zeros = torch.randint(1, 2**bits, (num_groups, out_f), generator=g)
    scales = (torch.rand(num_groups, out_f, generator=g) * 0.02 + 0.005).half()
    group_size = -(-in_f // num_groups)  # the last group may be short: a group tail
    g_idx = torch.arange(in_f) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(in_f, generator=g)]
    return q, zeros, scales, g_idx


@pytest.mark.parametrize(
    "bits, rows, out_f, in_f, num_groups, act_order",
    [
        (4, 1, 72, 96, 3, False),  # decode row; N not a multiple of the 64-wide tile
        (4, 5, 40, 80, 3, True),  # act-order g_idx, a short last group (27, 27, 26)
        (8, 3, 48, 64, 2, True),  # int8 weight-only (GPTQ 8-bit layout)
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gptq_matmul(bits, rows, out_f, in_f, num_groups, act_order, dtype):
    g = torch.Generator().manual_seed(5)
    q, zeros, scales, g_idx = _codes(out_f, in_f, num_groups, bits, g, act_order)
    t = pack_gptq(q, zeros, scales, g_idx, bits)
    x = torch.randn(rows, in_f, generator=g).to(dtype)
    bias = torch.randn(out_f, generator=g).to(dtype)
    want = quant_linear_ref(x, q, zeros, scales, g_idx, bias)
    got = quant_matmul_triton(x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], GPTQ, bits, bias)
    _check_matmul(got, want, dtype)


@pytest.mark.parametrize("rows, out_f, in_f, group_size", [(1, 64, 64, 32), (7, 24, 96, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_awq_matmul(rows, out_f, in_f, group_size, dtype):
    g = torch.Generator().manual_seed(6)
    q, zeros, scales, g_idx = _codes(out_f, in_f, in_f // group_size, 4, g, False)
    zeros = zeros % 16
    t = pack_awq(q, zeros, scales)
    x = torch.randn(rows, in_f, generator=g).to(dtype)
    want = quant_linear_ref(x, q, zeros, scales, g_idx)
    got = quant_matmul_triton(x, t["qweight"], t["qzeros"], t["scales"], g_idx.int(), AWQ, 4)
    _check_matmul(got, want, dtype)


def _check_matmul(got, want, dtype):
    # The same W (rounded alike) and fp32 accumulation: only the summation order differs.
    scale = want.abs().max()
    if dtype == torch.float32:
        _close(got, want, rtol=1e-4, atol=1e-5 * scale)
    else:
        _close(got, want, rtol=2 * BF16_ULP, atol=2 * BF16_ULP * scale)


def test_quant_linear_gptq_layout_feeds_the_kernel():
    """QuantLinear's CUDA layout (pack_gptq_layout) is GPTQ v1's, bit for bit, and the kernel
    reading it reproduces the reference: act-order, 8-bit, zero points at both ends."""
    from llmtool.kernels.quant_linear import pack_gptq_layout

    g = torch.Generator().manual_seed(7)
    for bits in (4, 8):
        q, zeros, scales, g_idx = _codes(32, 64, 4, bits, g, act_order=True)
        zeros[0, :3] = torch.tensor([1, 2**bits - 1, 2**bits])  # 2^bits wraps to 2^bits - 1 stored
        qweight, qzeros = pack_gptq_layout(q, zeros, bits)
        t = pack_gptq(q, zeros, scales, g_idx, bits)
        assert torch.equal(qweight, t["qweight"]) and torch.equal(qzeros, t["qzeros"])
        x = torch.randn(2, 64, generator=g)
        got = quant_matmul_triton(x, qweight, qzeros, scales.float(), g_idx.int(), GPTQ, bits)
        _check_matmul(got, quant_linear_ref(x, q, zeros, scales, g_idx), torch.float32)
