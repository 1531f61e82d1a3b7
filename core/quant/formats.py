"""Checkpoint packing formats for weight-only quantized linears: GPTQ v1 and AWQ GEMM.

Pure torch, vectorised: integer codes in, int32 words out, and back. The math every format
shares is W[o, i] = scale[g_idx[i], o] * (q[o, i] - zero[g_idx[i], o]); what differs inside
a word (code widths, the order of values, the zero offset) is a row of `_LAYOUTS`.
Not here: choosing the codes (RTN / GPTQ / AWQ) and running them (kernels/quant_linear.py).

GPTQ v1 (AutoGPTQ's `QuantLinear.pack`, read by transformers, vLLM, gptqmodel):
  qweight int32 [in * bits / 32, out], packed along the INPUT dim, value j of a word at bit
  bits * j; qzeros int32 [num_groups, out * bits / 32], packed along the OUTPUT dim and
  holding z - 1 (readers add the 1 back, so v1 cannot store z = 0); scales fp16
  [num_groups, out]; g_idx int32 [in].
AWQ GEMM (AutoAWQ's `WQLinear_GEMM.from_linear`, read by vLLM and transformers), 4-bit only:
  qweight int32 [in, out / 8] and qzeros int32 [num_groups, out / 8], both packed along the
  OUTPUT dim with the nibble at bit 4 * j holding column ORDER[j] of its group of 8,
  ORDER = (0, 2, 4, 6, 1, 3, 5, 7); raw zeros; scales fp16 [num_groups, out]; no g_idx.
"""

from dataclasses import dataclass

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of an AWQ word holds column AWQ_ORDER[j] of its 8


@dataclass(frozen=True)
class _Layout:
    bits: tuple[int, ...]  # supported code widths
    order: tuple[int, ...] | None  # value order inside a word (None: 0, 1, 2, ...); 8 entries
    zero_offset: int  # stored zero = z - zero_offset


_LAYOUTS = {
    "gptq": _Layout(bits=(4, 8), order=None, zero_offset=1),
    "awq": _Layout(bits=(4,), order=AWQ_ORDER, zero_offset=0),
}


def _check_bits(fmt: str, bits: int) -> _Layout:
    layout = _LAYOUTS[fmt]
    if bits not in layout.bits:
        raise ValueError(f"{fmt} packing supports bits {list(layout.bits)}, got {bits}")
    return layout


def _pack_last(values: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack integer codes along the last dim, 32 // bits per int32 word: value j of a word at
    bit bits * j ([..., n] -> [..., n * bits / 32]). With `order`, value j of a word is the
    group's element order[j]."""
    per_word = 32 // bits
    n = values.shape[-1]
    if n % per_word:
        raise ValueError(f"cannot pack {n} values of {bits} bits into whole 32-bit words")
    v = values.to(torch.int64).reshape(*values.shape[:-1], n // per_word, per_word)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=v.device)
    words = (v << shifts).sum(-1)  # [..., n / per_word], 0 .. 2^32 - 1
    # int32 holds the same 32 bits: words with the top bit set are negative (two's complement).
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_last(words: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of _pack_last: int32 [..., w] -> int32 codes [..., w * 32 / bits]."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=words.device)
    # An arithmetic shift copies the sign bit in from the left; the mask drops it again.
    v = (words.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., w, per_word]
    if order is not None:
        v = v[..., _inverse(order)]
    return v.reshape(*words.shape[:-1], -1)


def _inverse(order: tuple[int, ...]) -> list[int]:
    inv = [0] * len(order)
    for j, column in enumerate(order):
        inv[column] = j
    return inv


def _check_codes(name: str, values: torch.Tensor, low: int, high: int) -> None:
    if values.numel() and (int(values.min()) < low or int(values.max()) > high):
        raise ValueError(
            f"{name} must lie in [{low}, {high}], got [{int(values.min())}, {int(values.max())}]"
        )


def _check_shapes(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> None:
    if q.dim() != 2 or zeros.dim() != 2 or zeros.shape != scales.shape or zeros.shape[1] != q.shape[0]:
        raise ValueError(
            f"expected q [out, in], zeros and scales [num_groups, out]; got q {tuple(q.shape)}, "
            f"zeros {tuple(zeros.shape)}, scales {tuple(scales.shape)}"
        )


def dequantize(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """W [out, in] = scales[g_idx[i], o] * (q[o, i] - zeros[g_idx[i], o]), in fp32, then cast."""
    g = g_idx.long()
    w = scales.float()[g].T * (q.float() - zeros.float()[g].T)  # [out, in]
    return w.to(dtype)


def _default_g_idx(in_features: int, num_groups: int, device: torch.device) -> torch.Tensor:
    group_size = -(-in_features // num_groups)  # ceil: the last group may be short
    return torch.arange(in_features, device=device) // group_size


# ---- GPTQ v1 -------------------------------------------------------------------------------


def pack_gptq(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int
) -> dict[str, torch.Tensor]:
    """Codes q [out, in] (0 .. 2^bits - 1), raw zero points [num_groups, out], scales
    [num_groups, out] and g_idx [in] -> the GPTQ v1 tensors of one linear layer."""
    layout = _check_bits("gptq", bits)
    _check_shapes(q, zeros, scales)
    if g_idx.shape != (q.shape[1],):
        raise ValueError(f"g_idx must be [in] = [{q.shape[1]}], got {tuple(g_idx.shape)}")
    _check_codes("q", q, 0, (1 << bits) - 1)
    # v1 stores z - 1 in `bits` bits: z = 0 would be written as 2^bits - 1 and read back as 2^bits.
    _check_codes("GPTQ v1 zero points (stored as z - 1)", zeros, 1, 1 << bits)
    _check_codes("g_idx", g_idx, 0, zeros.shape[0] - 1)
    return {
        "qweight": _pack_last(q, bits).T.contiguous(),  # [in * bits / 32, out]
        "qzeros": _pack_last(
            zeros.to(torch.int64) - layout.zero_offset, bits
        ),  # [num_groups, out * bits / 32]
        "scales": scales.to(torch.float16).contiguous(),
        "g_idx": g_idx.to(torch.int32).contiguous(),
    }


def unpack_gptq(
    tensors: dict[str, torch.Tensor], bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ v1 tensors -> (q [out, in] uint8, raw zeros [num_groups, out] int32 (1 added
    back), scales [num_groups, out] as stored, g_idx [in] int64). A missing g_idx means
    contiguous groups."""
    layout = _check_bits("gptq", bits)
    q = _unpack_last(tensors["qweight"].T, bits).to(torch.uint8).contiguous()  # [out, in]
    zeros = _unpack_last(tensors["qzeros"], bits) + layout.zero_offset  # [num_groups, out]
    scales = tensors["scales"]
    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = _default_g_idx(q.shape[1], scales.shape[0], q.device)
    return q, zeros, scales, g_idx.long()


def dequantize_gptq(tensors: dict[str, torch.Tensor], bits: int, dtype: torch.dtype) -> torch.Tensor:
    """GPTQ v1 tensors -> W [out, in] in `dtype`."""
    return dequantize(*unpack_gptq(tensors, bits), dtype)


# ---- AWQ GEMM ------------------------------------------------------------------------------


def pack_awq(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, bits: int = 4
) -> dict[str, torch.Tensor]:
    """Codes q [out, in] (0 .. 15), raw zero points and scales [num_groups, out] (contiguous
    groups of in / num_groups inputs) -> the AWQ GEMM tensors of one linear layer."""
    layout = _check_bits("awq", bits)
    _check_shapes(q, zeros, scales)
    if q.shape[1] % zeros.shape[0]:
        raise ValueError(
            f"AWQ needs equal groups: in = {q.shape[1]} is not a multiple of {zeros.shape[0]} groups"
        )
    _check_codes("q", q, 0, (1 << bits) - 1)
    _check_codes("AWQ zero points", zeros, 0, (1 << bits) - 1)
    return {
        "qweight": _pack_last(q.T, bits, layout.order),  # [in, out / 8]
        "qzeros": _pack_last(zeros, bits, layout.order),  # [num_groups, out / 8]
        "scales": scales.to(torch.float16).contiguous(),
    }


def unpack_awq(
    tensors: dict[str, torch.Tensor], bits: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ GEMM tensors -> (q [out, in] uint8, zeros [num_groups, out] int32, scales
    [num_groups, out] as stored). AWQ groups are contiguous: g_idx = i // (in / num_groups)."""
    layout = _check_bits("awq", bits)
    q = _unpack_last(tensors["qweight"], bits, layout.order).T.to(torch.uint8).contiguous()  # [out, in]
    zeros = _unpack_last(tensors["qzeros"], bits, layout.order)  # [num_groups, out]
    return q, zeros, tensors["scales"]


def dequantize_awq(tensors: dict[str, torch.Tensor], group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """AWQ GEMM tensors -> W [out, in] in `dtype`; group_size (-1: per-channel) must match
    the tensors' shapes."""
    q, zeros, scales = unpack_awq(tensors)
    in_features = q.shape[1]
    size = in_features if group_size == -1 else group_size
    if size <= 0 or in_features % size or in_features // size != scales.shape[0]:
        raise ValueError(
            f"group_size {group_size} does not match AWQ tensors with in = {in_features} "
            f"and {scales.shape[0]} groups"
        )
    return dequantize(q, zeros, scales, torch.arange(in_features, device=q.device) // size, dtype)
