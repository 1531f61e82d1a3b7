"""SwiGLU's gate: silu(gate) * up. The reference is the two torch ops transformers runs;
on CPU a fused native kernel (kernels/csrc/elementwise.cpp) rounds at the same points."""

import torch
import torch.nn.functional as F

from .cpu_ops import cpu_ops
from .dispatch import use_fast_path


def silu_and_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # bf16 only: fp32, our reference precision, stays on torch's exp to the last ulp.
    if not use_fast_path():
        return silu_and_mul_ref(gate, up)
    if gate.device.type == "cpu" and gate.dtype == torch.bfloat16 and (ops := cpu_ops()):
        return ops.silu_and_mul(gate, up)
    return silu_and_mul_ref(gate, up)


def gelu_tanh_and_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """GeGLU's gate (Gemma): gelu(gate, tanh approximation) * up, as transformers computes it."""
    return F.gelu(gate, approximate="tanh") * up


def gelu_tanh_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # No fused kernel yet: torch's vectorised gelu is the fast path on every device.
    return gelu_tanh_and_mul_ref(gate, up)
