"""The vectorised dequantizers for Q5_0, Q5_1 and the K-quants (kernels/ggml_dequant.py)
against gguf-py's `gguf.quants.dequantize`, the reference, bit for bit (np.array_equal on
float32).

Blocks come from two sources: real quantizer output for awkward weights (mixed magnitudes,
zero rows, negative-only rows, a constant row, tiny and huge values), written by gguf-py
(Q5_0, Q5_1) and by our K-quant writer; and fully random bytes, with the fp16 scale fields
made finite (random bits elsewhere reach every scale, min and quant combination), in a count
that crosses the dequantizer's chunk boundary. A last test makes sure `dequantize_ggml`
takes the fast path for these types (the gguf-py fallback is patched to fail)."""

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

from llmtool.kernels import ggml_dequant
from llmtool.kernels.ggml_dequant import dequantize_ggml
from llmtool.kernels.ggml_kquants import quantize_kquant

Q = gguf.GGMLQuantizationType
TYPES = [Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# byte offsets of each block's fp16 fields (d, and dmin or m where the type has one)
FP16_FIELDS = {
    Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q2_K: [80, 82], Q.Q3_K: [108],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}  # fmt: skip


def _quantize(x: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype in (Q.Q5_0, Q.Q5_1):
        return gguf.quants.quantize(x, qtype)
    return quantize_kquant(x, qtype)


def _awkward_weights(rng: np.random.Generator) -> np.ndarray:
    """Rows of 512 float32 weights (two K super-blocks, sixteen 32-blocks) that stress the
    quantizers' corner cases, so the blocks hold extreme scales, mins and quants."""
    x = rng.standard_normal((12, 512)).astype(np.float32)
    x[0] = 0  # all zero: zero scales
    x[1] = -np.abs(x[1])  # negative only: mins at the top of their range
    x[2] = np.abs(x[2]) + 3  # positive only, away from zero
    x[3] *= np.float32(10.0) ** rng.integers(-8, 5, 512)  # magnitudes 1e-8 .. 1e4 mixed
    x[4] = 0.75  # constant
    x[5] *= 1e-30  # below fp16's range: scales flush to zero or subnormal
    x[6] *= 3e4  # near fp16's top: d near its largest finite value
    x[7, ::7] = 0  # scattered zeros
    x[8, :256] = 0  # one zero super-block beside a normal one
    x[9, 100] = 1000  # one outlier among small weights
    x[10] = np.round(x[10] * 4) / 4  # on a coarse grid: quants hit their ends exactly
    x[11] = -np.abs(x[11]) * 1e-3  # small and negative only
    return x


def _random_blocks(rng: np.random.Generator, qtype: Q, num_blocks: int) -> np.ndarray:
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (num_blocks, block_bytes), dtype=np.uint8)
    for start in FP16_FIELDS[qtype]:
        bits = blocks[:, start : start + 2].copy().view("<u2")
        # exponent all ones (inf or NaN) -> clear its top bit: a finite value of 1 to 2
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF
        blocks[:, start : start + 2] = bits.view(np.uint8)
    return blocks


def _assert_matches_reference(blocks: np.ndarray, qtype: Q) -> None:
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    expected = gguf_dequantize(blocks.reshape(-1, block_bytes), qtype).astype(np.float32)
    num_weights = blocks.size // block_bytes * block_size
    got = dequantize_ggml(blocks.ravel(), int(qtype), qtype.name, (num_weights,))
    assert got.dtype == np.float32 and got.shape == (num_weights,) and got.flags.writeable
    assert np.array_equal(got, expected.ravel())
    # array_equal counts -0.0 == +0.0; the sign of zero comes out the same too
    assert np.array_equal(np.signbit(got), np.signbit(expected.ravel()))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_quantized_blocks_match_gguf_py(qtype):
    x = _awkward_weights(np.random.default_rng(0))
    with np.errstate(all="ignore"):  # gguf-py divides by zero on the zero rows
        blocks = _quantize(x, qtype)
    _assert_matches_reference(blocks, qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype):
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    # one chunk and a few blocks more, so a partial last chunk is covered
    num_blocks = ggml_dequant._CHUNK_WEIGHTS // block_size + 5
    _assert_matches_reference(_random_blocks(np.random.default_rng(int(qtype)), qtype, num_blocks), qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_ggml_takes_the_fast_path(qtype, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"{qtype.name} fell back to gguf-py")

    monkeypatch.setattr(gguf.quants, "dequantize", fail)
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    blocks = _random_blocks(np.random.default_rng(1), qtype, 4)
    out = dequantize_ggml(blocks.ravel(), int(qtype), qtype.name, (2, 2 * block_size))
    assert qtype.name in ggml_dequant._FAST and out.shape == (2, 2 * block_size)
