"""Triton kernel (CUDA; the interpreter in tests): weight-only quantized matmul reading the
checkpoint layouts directly, dequantizing in registers (never a full-precision W in memory).

    y [M, N] = x [M, K] @ W^T,  W[n, k] = scales[g_idx[k], n] * (q[n, k] - z[g_idx[k], n])

Layouts (REFERENCE.md, "Quantized checkpoint formats"):
  GPTQ (bits 4 or 8; 8-bit is our int8 weight-only path): qweight int32 [K * bits / 32, N],
    packed along K, value j of a word at bit bits * j; qzeros int32 [G, N * bits / 32] along
    N, storing z - 1 (v1); scales [G, N]; g_idx [K] (act-order: any group per input).
  AWQ (4-bit): qweight int32 [K, N / 8] along N, nibble j holding column AWQ_ORDER[j] of 8,
    so column c sits in nibble (c % 2) * 4 + c // 2; qzeros [G, N / 8] the same, raw zeros;
    scales [G, N]; groups contiguous (g_idx = k // group_size).
Spec: kernels/quant_linear.py:quant_linear_ref on the unpacked codes (dequantize in fp32, cast
to x.dtype, one product with fp32 accumulation).
"""

import torch
import triton
import triton.language as tl

from .triton_paged_attention import interpreter_dot_fp32

GPTQ, AWQ = 0, 1  # layout ids (a table, not branches, on the Python side)
_ZERO_OFFSET = {GPTQ: 1, AWQ: 0}


@triton.jit
def _quant_matmul_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, y_ptr,
    M, N, K, stride_xm, stride_ym,
    LAYOUT: tl.constexpr, BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr, HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    PER_WORD: tl.constexpr = 32 // BITS
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    if LAYOUT == 0:
        z_col = rn // PER_WORD  # GPTQ qzeros: along N, plain order
        z_shift = (rn % PER_WORD) * BITS
    else:
        z_col = rn // 8  # AWQ: along N, interleaved nibbles
        z_shift = ((rn % 8) % 2 * 4 + (rn % 8) // 2) * 4
    z_words_per_row = N * BITS // 32
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        kn_ok = k_ok[:, None] & n_ok[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if LAYOUT == 0:
            words = tl.load(qw_ptr + (rk // PER_WORD)[:, None] * N + rn[None, :], mask=kn_ok, other=0)
            q = (words >> ((rk % PER_WORD) * BITS)[:, None]) & CODE_MASK  # [BK, BN]
        else:
            words = tl.load(qw_ptr + rk[:, None] * (N // 8) + (rn // 8)[None, :], mask=kn_ok, other=0)
            q = (words >> z_shift[None, :]) & CODE_MASK
        g = tl.load(g_ptr + rk, mask=k_ok, other=0)  # [BK] group of each input
        s = tl.load(s_ptr + g[:, None] * N + rn[None, :], mask=kn_ok, other=0.0).to(tl.float32)
        zw = tl.load(z_ptr + g[:, None] * z_words_per_row + z_col[None, :], mask=kn_ok, other=0)
        z = ((zw >> z_shift[None, :]) & CODE_MASK) + ZERO_OFFSET
        w = (s * (q - z).to(tl.float32)).to(x.dtype)  # [BK, BN], rounded as the reference's W
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        elif DOT_FP32:  # see triton_paged_attention.interpreter_dot_fp32
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
        else:
            acc += tl.dot(x, w)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(x.dtype), mask=m_ok[:, None] & n_ok[None, :])


def quant_matmul_triton(
    x: torch.Tensor,  # [..., K]
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,  # [G, N]
    g_idx: torch.Tensor,  # [K] int
    layout: int,
    bits: int = 4,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ W^T for a GPTQ (layout GPTQ, bits 4/8) or AWQ (layout AWQ, bits 4) layer -> [..., N]."""
    num_out = scales.shape[1]
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    rows, num_in = x2.shape
    y = torch.empty(rows, num_out, dtype=x.dtype, device=x.device)
    if rows:
        block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
        grid = (triton.cdiv(rows, block_m), triton.cdiv(num_out, 64))
        _quant_matmul_kernel[grid](
            x2, qweight, scales, qzeros, g_idx, bias if bias is not None else scales, y,
            rows, num_out, num_in, x2.stride(0), y.stride(0),
            LAYOUT=layout, BITS=bits, ZERO_OFFSET=_ZERO_OFFSET[layout], HAS_BIAS=bias is not None,
            IEEE=x.dtype == torch.float32, DOT_FP32=interpreter_dot_fp32(x.dtype), BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=32,
        )  # fmt: skip
    return y.view(*shape[:-1], num_out)
