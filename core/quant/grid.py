"""The integer grid every method quantizes onto: per-group scale and zero point, codes, and
the QuantizedWeight they make. RTN, GPTQ and AWQ differ only in WHICH weights they round
onto this grid (and how they pre-scale them); the grid is one definition, here.

W[o, i] ~ scale[g, o] * (q[o, i] - zero[g, o]) with g = g_idx[i], q in [0, 2^bits - 1].
Symmetric: zero = 2^(bits-1) (8 for 4-bit), scale from max |w|; asymmetric: the range
[min(w, 0), max(w, 0)] (GPTQ's convention: 0 stays exactly representable).
"""

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # [out, in] uint8 codes
    scales: torch.Tensor  # [G, out] fp32
    zeros: torch.Tensor  # [G, out] int32 raw zero points (no GPTQ v1 -1)
    g_idx: torch.Tensor  # [in] int32: input column i uses group g_idx[i]
    bits: int

    def dequantize(self) -> torch.Tensor:
        """[out, in] fp32."""
        g = self.g_idx.long()
        return self.scales.t()[:, g] * (self.q.float() - self.zeros.t()[:, g].float())


def max_code(bits: int) -> int:
    return 2**bits - 1


def grid_params(w: torch.Tensor, bits: int, sym: bool, min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point over the last dim: w [..., n] -> scale, zero [...] (fp32; zero
    integral). An all-zero group gets scale 1 so nothing divides by zero.

    min_zero=1 is for GPTQ v1 files, which store zero - 1 in `bits` bits and so cannot hold a
    zero point of 0 (a group with no negative weight): such a group's grid is stretched to
    put its zero at 1 instead."""
    maxq = max_code(bits)
    w = w.float()
    lo = w.amin(-1).clamp(max=0)
    hi = w.amax(-1).clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    span = hi - lo
    scale = torch.where(span > 0, span / maxq, torch.ones_like(span))
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
        low = zero < min_zero  # only groups with lo == 0: their top stays at maxq
        scale = torch.where(low, torch.where(hi > 0, hi / (maxq - min_zero), scale), scale)
        zero = torch.where(low, torch.full_like(zero, float(min_zero)), zero)
    return scale, zero


def to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """w [..., n] with scale/zero broadcastable to it -> codes (fp32, integral)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, max_code(bits))


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """What w becomes on the grid, back in float: scale * (q - zero)."""
    return scale * (to_codes(w, scale, zero, bits) - zero)


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [out, G, g] (group_size -1: one group of all columns)."""
    out, cols = w.shape
    g = cols if group_size == -1 else group_size
    return w.reshape(out, cols // g, g)


def fake_quantize_grouped(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest of w [out, in] in place of itself, per group: the RTN baseline and
    AWQ's inner loop (which calls it 20 times per layer group, so it stays vectorised)."""
    wg = grouped(w.float(), group_size)
    scale, zero = grid_params(wg, bits, sym)
    return fake_quantize(wg, scale[..., None], zero[..., None], bits).reshape(w.shape)


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool, min_zero: int = 0) -> QuantizedWeight:
    """Round-to-nearest: each group's own range, no calibration data."""
    out, cols = w.shape
    wg = grouped(w.float(), group_size)  # [out, G, g]
    scale, zero = grid_params(wg, bits, sym, min_zero)  # [out, G]
    q = to_codes(wg, scale[..., None], zero[..., None], bits).reshape(out, cols)
    g = cols if group_size == -1 else group_size
    g_idx = (torch.arange(cols) // g).to(torch.int32)
    return QuantizedWeight(q.to(torch.uint8), scale.t().contiguous(), zero.t().to(torch.int32).contiguous(), g_idx, bits)
