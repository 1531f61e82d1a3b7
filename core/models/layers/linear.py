"""Fusing linears that share an input into one product, plain or quantized."""

import torch
from torch import nn

from ....kernels.linear import PackedLinear
from ....kernels.quant_linear import QuantLinear


def fuse_linears(parts) -> nn.Module:
    """Linears sharing an input as one (row-stacked) product: packed for oneDNN when they are
    plain, one QuantLinear when all are quantized alike; a mix stays separate products."""
    if all(isinstance(p, QuantLinear) for p in parts):
        if len(parts) == 1:
            return parts[0]
        try:
            return QuantLinear.concat(list(parts))
        except ValueError:  # e.g. act-order parts with different g_idx: one product each
            return _Stacked(parts)
    if any(isinstance(p, QuantLinear) for p in parts):
        return _Stacked(parts)
    bias = torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None
    return PackedLinear(torch.cat([p.weight for p in parts]), bias)


class _Stacked(nn.Module):
    """Separate products concatenated (some parts quantized, some kept in full precision)."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(p if isinstance(p, QuantLinear) else PackedLinear(p.weight, p.bias) for p in parts)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)
