"""RMSNorm, as Llama normalises (weight) and as Gemma does (1 + weight)."""

import torch
import torch.nn.functional as F
from torch import nn

from ....kernels import add_rms_norm, rms_norm


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        # Gemma scales by (1 + w) and its checkpoints store w: kept as stored (exports and
        # quantized checkpoints write it back unchanged) until fold() adds it in for serving.
        # Gemma also scales in fp32 and rounds once (Llama rounds, then scales): its norms
        # take that path (torch ops; the fused kernels implement Llama's order).
        self.offset = offset
        self.scale_in_fp32 = offset != 0.0

    def forward(self, x):
        if self.scale_in_fp32:
            return self._fp32(x)
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x, residual):
        """(norm(x + residual), x + residual) in one pass: the residual add fused in."""
        if self.scale_in_fp32:
            summed = x + residual
            return self._fp32(summed), summed
        return add_rms_norm(x, residual, self.weight, self.eps)

    def _fp32(self, x):
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (self.weight.float() + self.offset)).to(x.dtype)

    def fold(self) -> None:
        """Inference only: the offset added into the weight once (kept fp32), not per call."""
        if self.offset:
            self.weight = nn.Parameter(self.weight.float() + self.offset, requires_grad=False)
            self.offset = 0.0
