"""Linear layers for inference: y = x @ W^T + b. The reference is F.linear.

On CPU in bf16, F.linear hands oneDNN a plain row-major weight, which it reorders into its
blocked AMX / AVX512-BF16 layout on every call: at decode sizes that reorder costs more than
the product (measured here: 576x3072 at 32 rows, 0.17 -> 0.10 ms; the 49152-row head at one
row, 5.0 -> 1.5 ms). PackedLinear reorders once, at load, and calls oneDNN's linear with
the packed weight. Same arithmetic (bf16 inputs, fp32 accumulation), so the same results.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

_PACK_BATCH_HINT = 32  # oneDNN picks its blocking for this many rows; any row count works


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and os.environ.get("LLMTOOL_CPU_KERNELS", "1") != "0"
    )


class PackedLinear(nn.Module):
    """An inference-only linear layer: the weight packed for oneDNN where that pays (CPU,
    bf16), else kept plain and run through F.linear. Built from a weight (and bias) once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = can_pack(weight)
        w = weight.detach()
        if self.packed:
            w = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), _PACK_BATCH_HINT)
        self.register_buffer("weight", w, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            shape = x.shape
            out = torch.ops.mkldnn._linear_pointwise(
                x.reshape(-1, shape[-1]), self.weight, self.bias, "none", [], ""
            )
            return out.view(*shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, packed={self.packed}"
