"""GGML tensor data to float32: the common types vectorised here, the rest through gguf-py.

gguf-py's dequantizers are exact but slow (about 2 s for the default model's Q4_1 weights,
6 to 16 s for a Q5_K_M file): its numpy runs over groups of 16 blocks, so Python overhead
dominates. These do ggml's dequantize_row_* in a few numpy passes over many blocks at once, with
gguf-py's float32 arithmetic in gguf-py's order (each product and difference rounded where
it rounds them; numpy has no fused multiply-add), so the results are bit-identical to
`gguf.quants.dequantize`, the reference: tests/test_ggml_dequant.py compares the two.
Block layouts: ../shared/REFERENCE.md, ggml-common.h, and ggml_kquants.py (the K-quant writer).
"""

import numpy as np


def dequantize_ggml(data: np.ndarray, type_id: int, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's raw uint8 bytes of ggml type `type_id` (named `type_name`, e.g. "Q4_1") as a
    new, writable float32 array of `shape` (torch order)."""
    fast = _FAST.get(type_name)
    if fast is not None:
        out = fast(data)
    else:
        import gguf
        from gguf.quants import dequantize as gguf_dequantize

        qtype = gguf.GGMLQuantizationType(type_id)
        _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        out = np.ascontiguousarray(gguf_dequantize(data.reshape(-1, block_bytes), qtype), dtype=np.float32)
    return out.reshape(shape)


def _f32(data: np.ndarray) -> np.ndarray:
    return data.view("<f4").copy()  # a copy: the mapped file is read-only


def _f16(data: np.ndarray) -> np.ndarray:
    return data.view("<f2").astype(np.float32)


def _bf16(data: np.ndarray) -> np.ndarray:
    return (data.view("<u2").astype(np.uint32) << 16).view(np.float32)


def _scales(blocks: np.ndarray, start: int) -> np.ndarray:
    """A per-block fp16 field at byte `start`, as an fp32 column."""
    return blocks[:, start : start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit packing: byte j holds element j (low nibble) and element j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q4_0(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 18)
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return (_scales(blocks, 0) * q).ravel()


def _q4_1(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 20)
    q = _nibbles(blocks[:, 4:])
    return (_scales(blocks, 0) * q + _scales(blocks, 2)).ravel()


def _q8_0(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 34)
    q = blocks[:, 2:].view(np.int8)
    return (_scales(blocks, 0) * q).ravel()


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's 32-bit little-endian field: bit i is element i's fifth bit."""
    return np.unpackbits(qh, axis=1, bitorder="little")


# The types below unpack more bit fields per block, so they run a kernel(blocks, out) over
# chunks of the tensor, writing in place: the temporaries stay small and in cache (for a
# 28M-weight Q6_K embedding: about 1.3x faster, and half the peak memory).
_CHUNK_WEIGHTS = 1 << 18  # weights per pass (1 MiB of float32 out)


def _blockwise(kernel, block_bytes: int, block_weights: int):
    """A tensor dequantizer running kernel(blocks, out[n, block_weights]) chunk by chunk."""
    chunk = _CHUNK_WEIGHTS // block_weights

    def dequantize(data: np.ndarray) -> np.ndarray:
        blocks = data.reshape(-1, block_bytes)
        out = np.empty((len(blocks), block_weights), dtype=np.float32)
        for start in range(0, len(blocks), chunk):
            kernel(blocks[start : start + chunk], out[start : start + chunk])
        return out.ravel()

    return dequantize


def _q5_0(blocks: np.ndarray, out: np.ndarray) -> None:
    # d, qh (fifth bits), qs[16] low nibbles: 22 bytes; x = d (q - 16)
    q = (_nibbles(blocks[:, 6:]) | (_high_bits(blocks[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
    np.multiply(_scales(blocks, 0), q, out=out)


def _q5_1(blocks: np.ndarray, out: np.ndarray) -> None:
    # d, m, qh (fifth bits), qs[16] low nibbles: 24 bytes; x = d q + m
    q = _nibbles(blocks[:, 8:]) | (_high_bits(blocks[:, 4:8]) << 4)
    np.multiply(_scales(blocks, 0), q, out=out)
    np.add(out, _scales(blocks, 2), out=out)


# K-quants: super-blocks of 256 weights in 8 or 16 sub-blocks, each with its own small
# integer scale (and min) that multiplies the super-block's fp16 d (and dmin).
QK_K = 256  # weights per super-block
_NIBBLE_SHIFTS = np.array([0, 4], dtype=np.uint8)
_CRUMB_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)
_BIT_SHIFTS = np.arange(8, dtype=np.uint8)


def _unpack(packed: np.ndarray, run: int, shifts: np.ndarray, mask: int) -> np.ndarray:
    """ggml's K-quant bit packing: [n, groups * run] bytes -> [n, groups * len(shifts) * run]
    fields. Each run of `run` bytes holds len(shifts) consecutive runs of values (weights or
    scales): the first in the bits at shifts[0], the next at shifts[1], and so on."""
    fields = packed.reshape(len(packed), -1, 1, run) >> shifts.reshape(1, 1, -1, 1)
    return (fields & np.uint8(mask)).reshape(len(packed), -1)


def _scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4):
    bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7, bytes 4-7 the
    same for the mins, bytes 8-11 the low 4 bits of scale (low nibble) and min (high) 4-7."""
    d, m, low = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = np.concatenate([d & 0x3F, (low & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    min_ = np.concatenate([m & 0x3F, (low >> 4) | ((m >> 2) & 0x30)], axis=1)
    return scale, min_


def _scaled(out: np.ndarray, q: np.ndarray, scale: np.ndarray, min_: np.ndarray | None = None) -> None:
    """out = scale * q - min per sub-block (scale, min: [n, sub-blocks] float32), written in
    place; float32 products then differences, as gguf-py rounds them."""
    n, num_sub = scale.shape
    out = out.reshape(n, num_sub, -1)
    np.multiply(scale.reshape(n, num_sub, 1), q.reshape(n, num_sub, -1), out=out)
    if min_ is not None:
        np.subtract(out, min_.reshape(n, num_sub, 1), out=out)


def _q2_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # scales[16] (low nibble scale, high nibble min), qs[64] 2-bit, d, dmin: 84 bytes
    sc = blocks[:, :16]
    q = _unpack(blocks[:, 16:80], 32, _CRUMB_SHIFTS, 0x03)
    _scaled(out, q, _scales(blocks, 80) * (sc & 0x0F), _scales(blocks, 82) * (sc >> 4))


def _q3_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # hmask[32], qs[64] 2-bit, scales[12] 6-bit, d: 110 bytes. The scales: low nibbles in
    # bytes 0-7 (scales 0-7 low, 8-15 high), top two bits in bytes 8-11; biased by 32.
    sc_low = _unpack(blocks[:, 96:104], 8, _NIBBLE_SHIFTS, 0x0F)
    sc = sc_low | (_unpack(blocks[:, 104:108], 4, _CRUMB_SHIFTS, 0x03) << 4)
    scale = _scales(blocks, 108) * (sc.astype(np.int8) - np.int8(32))
    low = _unpack(blocks[:, 32:96], 32, _CRUMB_SHIFTS, 0x03).astype(np.int8)
    high = _unpack(blocks[:, :32], 32, _BIT_SHIFTS, 0x01)
    q = low - ((high ^ 1) << 2).astype(np.int8)  # a clear hmask bit subtracts 4
    _scaled(out, q, scale)


def _q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # d, dmin, scales[12], qs[128] 4-bit: 144 bytes
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    q = _unpack(blocks[:, 16:], 32, _NIBBLE_SHIFTS, 0x0F)
    _scaled(out, q, _scales(blocks, 0) * sc, _scales(blocks, 2) * mn)


def _q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # d, dmin, scales[12], qh[32] fifth bits, qs[128] low nibbles: 176 bytes
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    low = _unpack(blocks[:, 48:], 32, _NIBBLE_SHIFTS, 0x0F)
    high = _unpack(blocks[:, 16:48], 32, _BIT_SHIFTS, 0x01)
    q = low | (high << 4)
    _scaled(out, q, _scales(blocks, 0) * sc, _scales(blocks, 2) * mn)


def _q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # ql[128] low nibbles (in runs of 64), qh[64] top two bits, scales[16] int8, d: 210 bytes
    low = _unpack(blocks[:, :128], 64, _NIBBLE_SHIFTS, 0x0F)
    high = _unpack(blocks[:, 128:192], 32, _CRUMB_SHIFTS, 0x03)
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)
    _scaled(out, q, _scales(blocks, 208) * blocks[:, 192:208].view(np.int8))


_FAST = {
    "F32": _f32, "F16": _f16, "BF16": _bf16,
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0,
    "Q5_0": _blockwise(_q5_0, 22, 32), "Q5_1": _blockwise(_q5_1, 24, 32),
    "Q2_K": _blockwise(_q2_k, 84, QK_K), "Q3_K": _blockwise(_q3_k, 110, QK_K),
    "Q4_K": _blockwise(_q4_k, 144, QK_K), "Q5_K": _blockwise(_q5_k, 176, QK_K),
    "Q6_K": _blockwise(_q6_k, 210, QK_K),
}  # fmt: skip
