"""RMSNorm, and the fused residual add + RMSNorm of a decoder layer. The references follow
transformers exactly (add in the dtype; normalise in fp32, cast back, then scale) so our
logits match HF's bit for bit in fp32 and closely in bf16."""

import torch
import torch.nn.functional as F

from .cpu_ops import cpu_ops
from .dispatch import use_fast_path, use_triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the spec for add_rms_norm."""
    summed = x + residual
    return rms_norm_ref(summed, weight, eps), summed


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """bf16 on CPU: a fused native kernel (kernels/csrc/elementwise.cpp), within one bf16
    ulp of the reference (bit-exact at hidden sizes up to 2048; the reduction order differs). fp32 (our reference precision) keeps torch's reduction
    order, bit-exact with transformers: torch's fused rms_norm, then HF's cast and scale."""
    if not use_fast_path():
        return rms_norm_ref(x, weight, eps)
    if use_triton(x):
        from .triton_norm import add_rms_norm_triton

        return add_rms_norm_triton(x, None, weight, eps)[0]
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16:
        if (ops := cpu_ops()) is not None:
            return ops.rms_norm(x, weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as add_rms_norm_ref. bf16 on CPU: one native pass (the add rounds to bf16
    as torch's does, then rms_norm's kernel); fp32 stays on torch, bit-exact."""
    if not use_fast_path():
        return add_rms_norm_ref(x, residual, weight, eps)
    if use_triton(x):
        from .triton_norm import add_rms_norm_triton

        return add_rms_norm_triton(x, residual, weight, eps)
    if x.device.type == "cpu" and x.dtype == residual.dtype == weight.dtype == torch.bfloat16:
        if (ops := cpu_ops()) is not None:
            return tuple(ops.add_rms_norm(x, residual, weight, eps))
    summed = x + residual
    return rms_norm(summed, weight, eps), summed
