"""Linear layers for inference: y = x @ W^T + b. The reference is F.linear.

On CPU in bf16, F.linear hands oneDNN a plain row-major weight, which it reorders into its
blocked AMX / AVX512-BF16 layout on every call: at decode sizes that reorder costs more than
the product (measured here: 576x3072 at 32 rows, 0.17 -> 0.10 ms; the 49152-row head at one
row, 5.0 -> 1.5 ms). PackedLinear reorders once, at load, and calls oneDNN's linear with
the packed weight. Same arithmetic (bf16 inputs, fp32 accumulation), so the same results.

At a few rows (decode) even the packed oneDNN product reaches only 10-20 GB/s of weight
bandwidth; the native GEMV (kernels/csrc/gemv.cpp, AVX512-BF16) streams a second copy of the
weight, laid out [out / 16, in / 2, 16, 2], at 30-80 GB/s. Up to GEMV_MAX_ROWS (4) rows it
serves the product; above, oneDNN. The price is the weight twice in memory (bf16 only).
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_ops import cpu_ops
from .dispatch import use_fast_path

_PACK_BATCH_HINT = 32  # oneDNN picks its blocking for this many rows; any row count works
GEMV_MAX_ROWS = 4  # most rows the native GEMV serves; oneDNN wins from about 6 (bench/kernels_bench.py)


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def pack_gemv(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [ceil(out / 16), ceil(in / 2), 16, 2], zero-padded: the native GEMV's layout.
    One allocation when no padding is needed (fresh pages are slow to fault in on a busy VM)."""
    out_features, in_features = weight.shape
    if out_features % 16 or in_features % 2:
        padded = weight.new_zeros(-(-out_features // 16) * 16, in_features + in_features % 2)
        padded[:out_features, :in_features] = weight
        weight = padded
    rows, cols = weight.shape
    return weight.view(rows // 16, 16, cols // 2, 2).permute(0, 2, 1, 3).contiguous()


def can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and _onednn_packs_bf16()
        and os.environ.get("LLMTOOL_CPU_KERNELS", "1") != "0"
    )


def _onednn_packs_bf16() -> bool:
    """oneDNN's bf16 weight reorder needs AVX512 (BW/VL/DQ) or AVX-NE-CONVERT; on a plain AVX2
    CPU it raises, so there a bf16 model runs F.linear on plain weights (slow, but correct)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


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
        ops = cpu_ops() if self.packed else None
        self.gemv = ops.gemv_bf16 if ops is not None and ops.gemv_bf16_available() else None
        gw = pack_gemv(weight.detach()) if self.gemv is not None else None
        self.register_buffer("gemv_weight", gw, persistent=False)
        self.gemv_bias = torch.empty(0) if bias is None else bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            if self.gemv is not None and x2.shape[0] <= GEMV_MAX_ROWS and use_fast_path():
                if self.in_features % 2:
                    x2 = F.pad(x2, (0, 1))
                out = self.gemv(x2, self.gemv_weight, self.gemv_bias, self.out_features)
                return out.view(*shape[:-1], self.out_features)
            out = torch.ops.mkldnn._linear_pointwise(
                x.reshape(-1, shape[-1]), self.weight, self.bias, "none", [], ""
            )
            return out.view(*shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, packed={self.packed}"
