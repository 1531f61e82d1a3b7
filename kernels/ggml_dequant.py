"""GGML tensor data to float32: the common types vectorised here, the rest through gguf-py.

gguf-py's dequantizers are exact but slow (about 2 s for the default model's Q4_1
weights); these do the same arithmetic as ggml's dequantize_row_* in a few numpy passes.
Block layouts: ../shared/REFERENCE.md and ggml-quants.c.
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


_FAST = {"F32": _f32, "F16": _f16, "BF16": _bf16, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0}
