"""GPTQ v1 and AWQ GEMM packing: round trips, hand-built words, and agreement with plain-loop
packers written the way AutoGPTQ's `QuantLinear.pack` and AutoAWQ's `WQLinear_GEMM` do it."""

import pytest
import torch

from llmtool.core.quant.formats import (
    AWQ_ORDER,
    dequantize_awq,
    dequantize_gptq,
    pack_awq,
    pack_gptq,
    unpack_awq,
    unpack_gptq,
)


def _as_int32(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def _loop_pack_rows(values: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """values [rows, n] -> int32 [rows, n * bits / 32], one python int per word."""
    per_word = 32 // bits
    order = order or list(range(per_word))
    rows, n = values.shape
    out = torch.zeros(rows, n // per_word, dtype=torch.int32)
    for r in range(rows):
        for w in range(n // per_word):
            word = 0
            for j in range(per_word):
                word |= int(values[r, w * per_word + order[j]]) << (bits * j)
            out[r, w] = _as_int32(word)
    return out


def _loop_dequantize(q, zeros, scales, g_idx) -> torch.Tensor:
    out, cols = q.shape
    w = torch.zeros(out, cols)
    for o in range(out):
        for i in range(cols):
            g = int(g_idx[i])
            w[o, i] = float(scales[g, o]) * (int(q[o, i]) - int(zeros[g, o]))
    return w


def _act_order_g_idx(cols: int, group_size: int, seed: int) -> torch.Tensor:
    """GPTQ act-order: columns quantized in a permuted order; column i falls in the group of
    its position in that order."""
    perm = torch.randperm(cols, generator=torch.Generator().manual_seed(seed))
    return torch.argsort(perm) // group_size


def _random_case(out, cols, bits, group_size, seed, zero_low=1, act_order=False):
    g = torch.Generator().manual_seed(seed)
    size = cols if group_size == -1 else group_size
    num_groups = cols // size
    q = torch.randint(0, 2**bits, (out, cols), generator=g, dtype=torch.uint8)
    zero_high = 2**bits if zero_low == 1 else 2**bits - 1  # GPTQ v1: 1..2^bits; AWQ: 0..15
    zeros = torch.randint(zero_low, zero_high + 1, (num_groups, out), generator=g, dtype=torch.int32)
    scales = (torch.rand(num_groups, out, generator=g) * 0.02 + 1e-3).half()
    g_idx = _act_order_g_idx(cols, size, seed) if act_order else torch.arange(cols) // size
    return q, zeros, scales, g_idx


# ---- GPTQ v1 -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, word", [(4, 0x77777777), (8, 0x7F7F7F7F)])
def test_gptq_symmetric_zeros_pack_to_the_known_word(bits, word):
    q, _, scales, g_idx = _random_case(64, 128, bits, 32, seed=bits)
    zeros = torch.full((4, 64), 2 ** (bits - 1), dtype=torch.int32)
    packed = pack_gptq(q, zeros, scales, g_idx, bits)
    if bits == 4:
        assert word == 2004318071
    assert packed["qzeros"].shape == (4, 64 * bits // 32)
    assert bool((packed["qzeros"] == word).all())


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_matches_a_loop_packer(bits):
    q, zeros, scales, g_idx = _random_case(16, 64, bits, 32, seed=7)
    q[0, :8] = 15 if bits == 4 else 255  # a word with the top bit set: negative as int32
    packed = pack_gptq(q, zeros, scales, g_idx, bits)
    assert packed["qweight"].dtype == torch.int32 and packed["qweight"].shape == (64 * bits // 32, 16)
    assert torch.equal(packed["qweight"], _loop_pack_rows(q, bits).T)  # along the input dim
    assert torch.equal(packed["qzeros"], _loop_pack_rows(zeros - 1, bits))  # along the output dim, z - 1
    assert int(packed["qweight"][0, 0]) < 0
    assert packed["scales"].dtype == torch.float16 and packed["g_idx"].dtype == torch.int32


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_round_trip(bits, group_size, act_order):
    q, zeros, scales, g_idx = _random_case(
        96, 256, bits, group_size, seed=bits + group_size, act_order=act_order
    )
    q2, zeros2, scales2, g_idx2 = unpack_gptq(pack_gptq(q, zeros, scales, g_idx, bits), bits)
    assert torch.equal(q2, q) and q2.dtype == torch.uint8
    assert torch.equal(zeros2, zeros)  # the +1 added back
    assert torch.equal(scales2, scales)
    assert torch.equal(g_idx2, g_idx.long())


def test_gptq_zero_point_range_is_checked():
    q, zeros, scales, g_idx = _random_case(16, 64, 4, 32, seed=1)
    zeros[0, 0] = 0  # v1 stores z - 1: zero cannot be written
    with pytest.raises(ValueError, match="zero points"):
        pack_gptq(q, zeros, scales, g_idx, 4)
    zeros[0, 0] = 16  # the largest v1 zero: stored as 15
    q2, zeros2, *_ = unpack_gptq(pack_gptq(q, zeros, scales, g_idx, 4), 4)
    assert int(zeros2[0, 0]) == 16
    with pytest.raises(ValueError, match="bits"):
        pack_gptq(q, zeros, scales, g_idx, 3)


def test_gptq_missing_g_idx_means_contiguous_groups():
    q, zeros, scales, g_idx = _random_case(16, 64, 4, 16, seed=2)
    packed = pack_gptq(q, zeros, scales, g_idx, 4)
    del packed["g_idx"]
    assert torch.equal(unpack_gptq(packed, 4)[3], torch.arange(64) // 16)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_dequantize_is_scale_times_code_minus_zero(bits):
    q, zeros, scales, g_idx = _random_case(8, 32, bits, 8, seed=3, act_order=True)
    w = dequantize_gptq(pack_gptq(q, zeros, scales, g_idx, bits), bits, torch.float32)
    torch.testing.assert_close(w, _loop_dequantize(q, zeros, scales, g_idx), rtol=1e-6, atol=0)
    assert (
        dequantize_gptq(pack_gptq(q, zeros, scales, g_idx, bits), bits, torch.bfloat16).dtype
        == torch.bfloat16
    )


# ---- AWQ GEMM ------------------------------------------------------------------------------


def test_awq_order_matches_autoawq():
    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)


def test_awq_hand_built_words():
    # Output column c holds code c: each word then spells the order of AWQ's nibbles.
    q = torch.arange(16, dtype=torch.uint8)[:, None].expand(16, 32).contiguous()  # [out, in]
    zeros = torch.arange(16, dtype=torch.int32)[None]  # [1, out]
    packed = pack_awq(q, zeros, torch.ones(1, 16))
    assert packed["qweight"].shape == (32, 2) and packed["qzeros"].shape == (1, 2)
    # nibble j (bits 4j..4j+3) holds column ORDER[j]: 0, 2, 4, 6, 1, 3, 5, 7
    assert bool((packed["qweight"][:, 0] == 0x75316420).all())
    assert bool((packed["qweight"][:, 1] == _as_int32(0xFDB9ECA8)).all())  # top nibble 15: negative
    assert packed["qzeros"].tolist() == [[0x75316420, _as_int32(0xFDB9ECA8)]]


def test_awq_matches_a_loop_packer_and_an_independent_reader():
    q, zeros, scales, _ = _random_case(32, 64, 4, 16, seed=5, zero_low=0)
    packed = pack_awq(q, zeros, scales)
    assert torch.equal(packed["qweight"], _loop_pack_rows(q.T, 4, list(AWQ_ORDER)))
    assert torch.equal(packed["qzeros"], _loop_pack_rows(zeros, 4, list(AWQ_ORDER)))
    # Read back the way vLLM does: shift out nibbles 0..7, then reorder by [0, 4, 1, 5, 2, 6, 3, 7].
    nibbles = (packed["qweight"][:, :, None] >> torch.arange(0, 32, 4)) & 15  # [in, out/8, 8]
    codes = nibbles[:, :, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(64, 32)
    assert torch.equal(codes.T.to(torch.uint8), q)


@pytest.mark.parametrize("group_size", [16, 64, -1])
def test_awq_round_trip(group_size):
    q, zeros, scales, _ = _random_case(64, 128, 4, group_size, seed=group_size, zero_low=0)
    q2, zeros2, scales2 = unpack_awq(pack_awq(q, zeros, scales))
    assert torch.equal(q2, q) and torch.equal(zeros2, zeros) and torch.equal(scales2, scales)
    assert q2.dtype == torch.uint8 and zeros2.dtype == torch.int32


def test_awq_dequantize_is_scale_times_code_minus_zero():
    q, zeros, scales, g_idx = _random_case(16, 32, 4, 8, seed=9, zero_low=0)
    w = dequantize_awq(pack_awq(q, zeros, scales), 8, torch.float32)
    torch.testing.assert_close(w, _loop_dequantize(q, zeros, scales, g_idx), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="group_size"):
        dequantize_awq(pack_awq(q, zeros, scales), 16, torch.float32)


def test_awq_is_four_bit_only():
    q, zeros, scales, _ = _random_case(16, 32, 4, 8, seed=9, zero_low=0)
    with pytest.raises(ValueError, match="bits"):
        pack_awq(q, zeros, scales, bits=8)
    with pytest.raises(ValueError, match="bits"):
        unpack_awq(pack_awq(q, zeros, scales), bits=8)
    zeros[0, 0] = 16
    with pytest.raises(ValueError, match="zero points"):
        pack_awq(q, zeros, scales)
