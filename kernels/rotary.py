"""Rotary position embedding in the HF (rotate-half) layout.

GGUF files store q/k rows permuted for llama.cpp's interleaved layout; the GGUF loader
undoes that permutation, so one layout serves every weight source.
"""

import torch

from .cpu_ops import cpu_ops
from .dispatch import use_fast_path, use_triton


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D]; cos, sin [N, D] (already in x's dtype) -> [N, H, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [N, 1, D]
    return x * cos + _rotate_half(x) * sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if use_triton(x):
        from .triton_rotary import rotary_triton

        return rotary_triton(x, cos, sin)
    return apply_rotary_ref(x, cos, sin)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """[-sin_lo, sin_hi]: folds rotate-half's negation into the table, once per forward."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rotary_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """apply_rotary_ref, bit for bit, in 4 ops instead of 7: rotate-half(x) * sin equals
    roll(x, D/2) * signed_sin(sin). x [N, H, D]; cos, sin_signed [N, D]. On CUDA the Triton
    kernel (which takes the plain sin); under reference_kernels() the reference itself."""
    if not use_fast_path() or use_triton(x):
        return apply_rotary(x, cos, signed_sin(sin_signed))  # signed_sin is its own inverse
    if x.device.type == "cpu" and x.dtype == cos.dtype == torch.bfloat16 and (ops := cpu_ops()) is not None:
        return ops.rotary_signed(x, cos, sin_signed)  # one native pass, the same three roundings
    return x * cos.unsqueeze(1) + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed.unsqueeze(1)
