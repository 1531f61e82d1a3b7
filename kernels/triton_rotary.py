"""Triton kernel (CUDA; the interpreter in tests): rotary embedding, rotate-half layout.

One program per (token, head): out_lo = x_lo cos_lo - x_hi sin_lo, out_hi = x_hi cos_hi +
x_lo sin_hi, in fp32, one rounding at the end. Spec: kernels/rotary.py:apply_rotary_ref
(which rounds after each torch op in low precision): equal in fp32 to 1e-6, within one
bf16 ulp in bf16.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, num_heads, HALF: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // num_heads
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    base = pid * 2 * HALF
    lo = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
    hi = tl.load(x_ptr + base + HALF + offs, mask=mask, other=0.0)
    c_lo = tl.load(cos_ptr + n * 2 * HALF + offs, mask=mask, other=0.0).to(tl.float32)
    c_hi = tl.load(cos_ptr + n * 2 * HALF + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    s_lo = tl.load(sin_ptr + n * 2 * HALF + offs, mask=mask, other=0.0).to(tl.float32)
    s_hi = tl.load(sin_ptr + n * 2 * HALF + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    lo_f, hi_f = lo.to(tl.float32), hi.to(tl.float32)
    tl.store(out_ptr + base + offs, (lo_f * c_lo - hi_f * s_lo).to(lo.dtype), mask=mask)
    tl.store(out_ptr + base + HALF + offs, (hi_f * c_hi + lo_f * s_hi).to(lo.dtype), mask=mask)


def rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D]; cos, sin [N, D] (plain sin, not signed) -> [N, H, D]."""
    num_tokens, num_heads, head_dim = x.shape
    xc = x.contiguous()
    out = torch.empty_like(xc)
    if xc.numel():
        half = head_dim // 2
        _rotary_kernel[(num_tokens * num_heads,)](
            xc, cos.contiguous(), sin.contiguous(), out, num_heads, HALF=half, BLOCK=triton.next_power_of_2(half)
        )
    return out
