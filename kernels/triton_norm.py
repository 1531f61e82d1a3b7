"""Triton kernel (CUDA; the interpreter in tests): fused residual add + RMSNorm.

One program per row: residual = x + residual (rounded to the dtype, as torch's add does),
then RMSNorm of it in fp32 with transformers' rounding (normalise, cast, scale). Without a
residual it is plain RMSNorm. Spec: kernels/norm.py:add_rms_norm_ref / rms_norm_ref;
equal in fp32 up to the reduction order (rtol 1e-5), within one bf16 ulp in bf16.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, cols, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    if HAS_RESIDUAL:
        # Add in fp32, round once to the dtype: what torch's low-precision add does.
        r = tl.load(res_ptr + row * cols + offs, mask=mask, other=0.0).to(tl.float32)
        x = (xf + r).to(x.dtype)
        tl.store(res_out_ptr + row * cols + offs, x, mask=mask)
        xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / cols + eps)
    normed = (xf * inv).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * cols + offs, (w * normed).to(x.dtype), mask=mask)


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., H] -> (rms_norm(x + residual), x + residual)."""
    cols = x.shape[-1]
    xc = x.contiguous()
    out = torch.empty_like(xc)
    res = residual.contiguous() if residual is not None else xc
    res_out = torch.empty_like(xc) if residual is not None else xc
    rows = xc.numel() // max(cols, 1)
    if rows:
        _add_rms_norm_kernel[(rows,)](
            xc, res, weight, out, res_out, cols, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(cols),
        )  # fmt: skip
    return out, res_out
