"""Weight-only quantized linear layers for inference (int4 / int8 codes, a scale and a zero
point per group of inputs): y = x @ W^T + b with

    W[o, i] = scales[g_idx[i], o] * (q[o, i] - zeros[g_idx[i], o]).

The reference dequantizes (in fp32, then x.dtype) and calls F.linear. QuantLinear is built
from unpacked codes, whatever the checkpoint format (core/quant/formats.py unpacks GPTQ and
AWQ), and keeps no full-precision weight: 0.5 byte per weight at 4 bits, 1 at 8, plus scales.

CPU fast path: codes in the layout of torch's int4 CPU kernel, `_weight_int4pack_mm_for_cpu`,
which computes w = (q - 8) * scale + zero_float per group, so zero_float = scale * (8 - z).
It wants contiguous groups of 32..256 inputs: act-order g_idx is sorted once here (the input
features permuted to match; x's columns gathered per call), and a larger group (per-channel)
repeats its scale over kernel groups. 8-bit codes run as two int4 products, q = 16 hi + lo:
hi with scale 16 s and zero s (136 - z), lo with scale s and zero 0. The kernel is a GEMV per
row (its cost grows linearly with the rows) and only bf16 has a vectorised one, so past a few
dozen rows, or in fp32/fp16, each call dequantizes W^T from the same packed codes and runs one
oneDNN GEMM. Measured here (2 cores with AVX512-BF16/AMX, torch 2.13, group 64, idle machine):
ms per forward of the default model's 30 layers of fused qkv 576x960, o 576x576, gate_up
576x3072 and down 1536x576:

    bf16, rows                     1     8    16    32    48    64   128   300
    4-bit int4 GEMM              5.0  11.8  22.1  41.0  59.3  78.5   153   356
    4-bit dequantize + GEMM     66.5  77.5  70.6  71.3  77.2  83.9  90.2   108
    8-bit 2 x int4 GEMM         10.6  25.0  44.7  82.9   121   158     -   727
    8-bit dequantize + GEMM     95.7  97.1  96.1   100  99.7   104     -   126
    8-bit _weight_int8pack_mm*  10.6  25.4  36.7  58.7  78.9  99.1     -   414
    reference (fp32 dequant)     556   584   555   417   583   536   594   574
    bf16 weights, F.linear      24.4  20.2  19.4  21.7  25.2  26.8  34.6  45.0
    bf16 weights, oneDNN-packed 15.6  14.9  15.6  22.2  20.0  21.2  27.0  52.7
    fp32, 4-bit int4 GEMM 90.5 at 1 row, 2576 at 32; dequantize + GEMM 84.2 and 112;
    fp16 int4 GEMM 515 at 1 row. (* per-channel only: not used, as 2 x int4 ties it at
    one row and also takes groups.)

LLMTOOL_CPU_KERNELS=0, codes built on another device, or a shape the kernel does not take (out
not a multiple of 64, groups not a multiple of 32) keep the reference path: correct, slower.
A layer built on CPU and then moved (.to(device)) runs the dequantize path there: plain torch.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import triton_available, use_fast_path, use_triton

_KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first
_BLOCK_N = 64  # the CPU int4 pack interleaves output rows in blocks of 64: [out / 64, in, 32] bytes
_FAST_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Most rows for which the int4 GEMV kernel beats dequantize-then-GEMM, by (dtype, bits); 0
# elsewhere. The crossovers measured (module docstring) are about 70 and 40 rows.
_MAX_GEMM_ROWS = {(torch.bfloat16, 4): 64, (torch.bfloat16, 8): 32}
# Which dim of each buffer runs along the output features: concat() joins along it.
_OUT_DIMS = {
    "q": 0,
    "zeros": 1,
    "scales": 1,
    "packed": 0,
    "packed_lo": 0,
    "scale_zeros": 1,
    "scale_zeros_lo": 1,
    "bias": 0,
    "qweight": 1,
    "qzeros": 1,
}


def valid_group_sizes(in_features: int) -> list[int]:
    """Group sizes a layer with `in_features` inputs can use (-1: one group, per-channel)."""
    return [g for g in (32, 64, 128) if in_features % g == 0] + [-1]


def check_group_size(in_features: int, group_size: int) -> int:
    """The number of groups, or ValueError naming the valid sizes."""
    if group_size == -1:
        return 1
    if group_size <= 0 or in_features % group_size:
        valid = ", ".join(str(g) for g in valid_group_sizes(in_features))
        raise ValueError(
            f"group size {group_size} does not divide in_features {in_features}; valid group sizes: {valid}"
        )
    return in_features // group_size


def dequantize_ref(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """W [out, in] in dtype, computed in fp32."""
    g = g_idx.long()
    return (scales.float()[g].T * (q.float() - zeros.float()[g].T)).to(dtype)


def quant_linear_ref(
    x: torch.Tensor,
    q: torch.Tensor,
    zeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] -> [..., out] in x.dtype. The spec for QuantLinear."""
    w = dequantize_ref(q, zeros, scales, g_idx, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _group_size(g_idx: torch.Tensor, in_features: int, num_groups: int) -> int:
    """The group size g_idx implies; every group must hold the same number of inputs."""
    group_size = in_features // num_groups
    counts = torch.bincount(g_idx.long(), minlength=num_groups)
    if in_features % num_groups or counts.numel() != num_groups or bool((counts != group_size).any()):
        g = -(-in_features // num_groups)
        valid = ", ".join(str(v) for v in valid_group_sizes(in_features))
        raise ValueError(
            f"{num_groups} groups over in_features {in_features} (group size ~{g}) are not equal; "
            f"QuantLinear needs in % group_size == 0; valid group sizes: {valid}"
        )
    return group_size


def _kernel_ok(device: torch.device, out_features: int, group_size: int, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in _FAST_DTYPES
        and out_features % _BLOCK_N == 0
        and any(group_size % k == 0 for k in _KERNEL_GROUP_SIZES)
        # torch packs int4 in blocks of 64 output rows only on AVX512 (AVX2 builds use another
        # block, which _dequantize_packed does not read): elsewhere the codes stay unpacked.
        and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        and os.environ.get("LLMTOOL_CPU_KERNELS", "1") != "0"
    )


def pack_gptq_layout(q: torch.Tensor, zeros: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes q [out, in] and raw zeros [G, out] -> GPTQ v1's qweight [in * bits / 32, out] and
    qzeros [G, out * bits / 32] (stored z - 1), the layout the Triton kernel reads."""
    per_word = 32 // bits

    def pack_last(v: torch.Tensor) -> torch.Tensor:
        v = v.to(torch.int64).reshape(*v.shape[:-1], -1, per_word)
        words = (v << torch.arange(0, 32, bits, device=v.device)).sum(-1)
        return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    return pack_last(q).T.contiguous(), pack_last((zeros.to(torch.int64) - 1) % (1 << bits))


def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 -> the CPU int4 kernel's layout ([out, in / 2] uint8)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def _dequantize_packed(
    packed: torch.Tensor,
    packed_lo: torch.Tensor | None,
    scale: torch.Tensor,
    offset: torch.Tensor,
    in_features: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """W^T [in, out] = codes * scale + offset (scale, offset [G, out] in dtype), straight from
    the kernel layout: byte (b, k, d) of its [out / 64, in, 32] bytes holds the codes of
    output rows 64 b + d (low nibble) and 64 b + 32 + d (high nibble) at input k. Two passes
    over W: codes written as dtype, then one in-place multiply-add (fewer than any variant
    tried: a mixed-dtype addcmul into the strided halves was ~30% slower)."""
    p = packed.view(-1, in_features, _BLOCK_N // 2).transpose(0, 1)  # [in, out / 64, 32]
    if packed_lo is None:
        halves = (p & 15, p >> 4)
    else:  # 8-bit: q = 16 hi + lo, rebuilt as whole bytes (uint8 << 4 drops the high nibble)
        lo = packed_lo.view(-1, in_features, _BLOCK_N // 2).transpose(0, 1)
        halves = ((p << 4) | (lo & 15), (p & 0xF0) | (lo >> 4))
    w = torch.empty(in_features, p.shape[1], 2, _BLOCK_N // 2, dtype=dtype, device=packed.device)
    w[:, :, 0] = halves[0]
    w[:, :, 1] = halves[1]
    w3 = w.view(scale.shape[0], -1, scale.shape[1])  # [G, g, out]
    torch.addcmul(offset[:, None], w3, scale[:, None], out=w3)
    return w.view(in_features, -1)


class QuantLinear(nn.Module):
    """An inference-only weight-only quantized linear layer, built once from unpacked codes:
    q [out, in] (0 .. 2^bits - 1), zeros and scales [num_groups, out], g_idx [in], bits 4 or
    8, an optional bias, and the dtype it computes in. forward(x [..., in]) -> [..., out] in
    x.dtype."""

    def __init__(
        self,
        q: torch.Tensor,
        zeros: torch.Tensor,
        scales: torch.Tensor,
        g_idx: torch.Tensor,
        bits: int,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"QuantLinear supports bits 4 and 8, got {bits}")
        out_features, in_features = q.shape
        num_groups = zeros.shape[0]
        if (
            zeros.shape != (num_groups, out_features)
            or scales.shape != zeros.shape
            or g_idx.shape != (in_features,)
        ):
            raise ValueError(
                f"expected q [out, in], zeros/scales [num_groups, out], g_idx [in]; got q {tuple(q.shape)}, "
                f"zeros {tuple(zeros.shape)}, scales {tuple(scales.shape)}, g_idx {tuple(g_idx.shape)}"
            )
        self.in_features, self.out_features, self.bits, self.dtype = in_features, out_features, bits, dtype
        self.group_size = _group_size(g_idx, in_features, num_groups)
        self.is_packed = _kernel_ok(q.device, out_features, self.group_size, dtype)
        self.register_buffer("g_idx", g_idx.to(torch.int32), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)
        # CUDA with Triton: GPTQ-layout codes for the fused-dequant kernel, beside the plain
        # codes the reference reads (both are small: 0.5 + 1 byte per weight at 4 bits).
        self.triton_layout = (
            q.device.type == "cuda" and triton_available() and in_features % (32 // bits) == 0
            and out_features % (32 // bits) == 0
        )  # fmt: skip
        if self.triton_layout:
            qweight, qzeros = pack_gptq_layout(q, zeros, bits)
            self.register_buffer("qweight", qweight, persistent=False)
            self.register_buffer("qzeros", qzeros, persistent=False)
        if not self.is_packed:
            self.register_buffer("q", q.to(torch.uint8), persistent=False)
            self.register_buffer("zeros", zeros.float(), persistent=False)
            self.register_buffer("scales", scales.float(), persistent=False)
            return
        # Sorting by group makes every group contiguous; stable, so a plain g_idx stays put.
        order = torch.argsort(g_idx.long(), stable=True)
        is_sorted = bool((order == torch.arange(in_features)).all())
        self.register_buffer("perm", None if is_sorted else order, persistent=False)
        codes = q if is_sorted else q[:, order]  # [out, in], groups contiguous
        self.kernel_group_size = next(k for k in _KERNEL_GROUP_SIZES if self.group_size % k == 0)
        repeat = self.group_size // self.kernel_group_size
        s = scales.float().repeat_interleave(repeat, 0)  # [in / kernel_group_size, out]
        z = zeros.float().repeat_interleave(repeat, 0)
        codes = codes.to(torch.int32)
        if bits == 4:
            self.register_buffer("packed", _pack_int4(codes), persistent=False)
            self.register_buffer("scale_zeros", torch.stack([s, s * (8 - z)], -1).to(dtype), persistent=False)
            self.register_buffer("packed_lo", None, persistent=False)
            self.register_buffer("scale_zeros_lo", None, persistent=False)
        else:  # q = 16 hi + lo: hi carries the whole zero point, lo none
            self.register_buffer("packed", _pack_int4(codes >> 4), persistent=False)
            self.register_buffer(
                "scale_zeros", torch.stack([16 * s, s * (136 - z)], -1).to(dtype), persistent=False
            )
            self.register_buffer("packed_lo", _pack_int4(codes & 15), persistent=False)
            self.register_buffer(
                "scale_zeros_lo", torch.stack([s, torch.zeros_like(s)], -1).to(dtype), persistent=False
            )

    @classmethod
    def concat(cls, parts: list["QuantLinear"]) -> "QuantLinear":
        """One layer computing the parts' outputs side by side (fused q/k/v, gate/up): they
        must share the input, and so g_idx, bits, dtype and path."""
        first = parts[0]
        if any(p._signature() != first._signature() or not torch.equal(p.g_idx, first.g_idx) for p in parts):
            raise ValueError("QuantLinear.concat needs parts with the same g_idx, bits, dtype and path")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for attr in ("in_features", "bits", "dtype", "group_size", "is_packed", "kernel_group_size", "triton_layout"):
            if hasattr(first, attr):
                setattr(fused, attr, getattr(first, attr))
        fused.out_features = sum(p.out_features for p in parts)
        has_bias = any(p.bias is not None for p in parts)
        for name, tensor in first._buffers.items():  # perm may be None: named_buffers() skips those
            if name not in _OUT_DIMS:
                fused.register_buffer(name, tensor, persistent=False)
        for name, dim in _OUT_DIMS.items():
            if not hasattr(first, name):
                continue
            if name == "bias":
                tensors = [
                    p.bias
                    if p.bias is not None
                    else torch.zeros(p.out_features, dtype=p.dtype, device=p.g_idx.device)
                    for p in parts
                ]
                joined = torch.cat(tensors) if has_bias else None
            else:
                tensors = [getattr(p, name) for p in parts]
                joined = None if tensors[0] is None else torch.cat(tensors, dim)
            fused.register_buffer(name, joined, persistent=False)
        return fused

    def _signature(self) -> tuple:
        return (
            self.in_features,
            self.bits,
            self.dtype,
            self.is_packed,
            getattr(self, "kernel_group_size", None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "triton_layout", False) and use_triton(x):
            from .triton_quant_matmul import GPTQ, quant_matmul_triton

            x2 = x.to(self.dtype)
            y = quant_matmul_triton(x2, self.qweight, self.qzeros, self.scales.to(self.dtype), self.g_idx, GPTQ,
                                    self.bits, self.bias)  # fmt: skip
            return y.to(x.dtype)
        if not self.is_packed:
            return quant_linear_ref(x, self.q, self.zeros, self.scales, self.g_idx, self.bias)
        if not use_fast_path():  # the packed codes are all this layer keeps: dequantize them in fp32
            return self._reference_from_packed(x)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.dtype)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if x2.shape[0] == 0:
            y = x2.new_zeros(0, self.out_features)
        elif x2.device.type == "cpu" and x2.shape[0] <= _MAX_GEMM_ROWS.get((self.dtype, self.bits), 0):
            y = self._int4_gemm(x2.contiguous())
        else:
            y = self._dequant_gemm(x2)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def _int4_gemm(self, x2: torch.Tensor) -> torch.Tensor:
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(x2, self.packed, self.kernel_group_size, self.scale_zeros)
        if self.packed_lo is not None:
            y += mm(x2, self.packed_lo, self.kernel_group_size, self.scale_zeros_lo)
        if self.bias is not None:
            y += self.bias
        return y

    def _dequant_gemm(self, x2: torch.Tensor) -> torch.Tensor:
        """Dequantize W^T [in, out] once for this call from the packed codes, then one GEMM."""
        sz = self.scale_zeros.float()  # [G, out, 2]
        if self.packed_lo is None:  # w = (q - 8) s + zf = q s + (zf - 8 s)
            scale, offset = sz[..., 0], sz[..., 1] - 8 * sz[..., 0]
        else:  # w = (hi - 8) 16 s + zh + (lo - 8) s = q s + (zh - 136 s)
            scale = sz[..., 0] / 16
            offset = sz[..., 1] - 136 * scale
        w = _dequantize_packed(
            self.packed,
            self.packed_lo,
            scale.to(self.dtype),
            offset.to(self.dtype),
            self.in_features,
            self.dtype,
        )  # [in, out]
        if self.bias is None:
            return x2 @ w
        return torch.addmm(self.bias, x2, w)

    def _reference_from_packed(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's arithmetic (W in fp32, cast to x.dtype, F.linear) on codes recovered
        from the kernel layout; act-order's input permutation is applied to x."""
        sz = self.scale_zeros.float()
        if self.packed_lo is None:
            scale, offset = sz[..., 0], sz[..., 1] - 8 * sz[..., 0]
        else:
            scale = sz[..., 0] / 16
            offset = sz[..., 1] - 136 * scale
        w = _dequantize_packed(self.packed, self.packed_lo, scale, offset, self.in_features, torch.float32)
        x2 = x.reshape(-1, self.in_features)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = F.linear(x2, w.T.to(x.dtype), bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, packed={self.is_packed}"
        )
