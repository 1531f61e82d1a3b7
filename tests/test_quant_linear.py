"""QuantLinear (CPU int4 GEMM / dequantize-then-GEMM) against quant_linear_ref, the spec.

Tolerances, relative to the largest |output|: fp32 1e-5 (the kernel computes each weight as
(q - 8) * scale + zero instead of scale * (q - z): rounding only); bf16 2e-2, about four
bf16 steps at that scale (weights and outputs both round to 8 significant bits)."""

import pytest
import torch
import torch.nn.functional as F

import llmtool.kernels.quant_linear as ql
from llmtool.kernels import QuantLinear, quant_linear_ref

# (in, out) of the default model's linears, fused qkv and gate_up included
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 960), (576, 3072)]
ROWS = (1, 7, 32, 300)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}

# torch packs int4 for its CPU kernel in 64-row blocks only on AVX512; QuantLinear packs nowhere
# else (on an AVX2 EPYC the packed paths gave wrong products), so the packed paths exist only there.
needs_packing = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
    reason="the packed int4/int8 CPU paths need AVX512 (torch's int4 layout differs elsewhere)",
)


def _case(in_features, out_features, bits, group_size, seed, act_order=True):
    g = torch.Generator().manual_seed(seed)
    size = in_features if group_size == -1 else group_size
    num_groups = in_features // size
    q = torch.randint(0, 2**bits, (out_features, in_features), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 2**bits, (num_groups, out_features), generator=g, dtype=torch.int32)
    scales = (torch.rand(num_groups, out_features, generator=g) * 0.02 + 1e-3).half()
    if act_order:
        perm = torch.randperm(in_features, generator=g)
        g_idx = torch.argsort(perm) // size
    else:
        g_idx = torch.arange(in_features) // size
    return q, zeros, scales, g_idx


def _check(y, ref, dtype):
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=TOLERANCE[dtype] * float(ref.float().abs().max()))


@needs_packing
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_fast_path_matches_reference(dtype, bits, group_size):
    shapes = [s for s in SHAPES if group_size == -1 or s[0] % group_size == 0]
    for n, (in_features, out_features) in enumerate(shapes):
        q, zeros, scales, g_idx = _case(in_features, out_features, bits, group_size, seed=n)
        bias = torch.randn(out_features) if n % 2 else None
        layer = QuantLinear(q, zeros, scales, g_idx, bits, bias, dtype)
        assert layer.is_packed
        w = ql.dequantize_ref(q, zeros, scales, g_idx, dtype)  # quant_linear_ref's weight, made once
        for rows in ROWS:
            x = torch.randn(rows, in_features).to(dtype)
            _check(layer(x), F.linear(x, w, None if bias is None else bias.to(dtype)), dtype)


@needs_packing
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("max_gemm_rows", [0, 10**6])  # always dequantize / always the int4 GEMM
def test_both_cpu_paths_match_reference(monkeypatch, bits, max_gemm_rows):
    q, zeros, scales, g_idx = _case(1536, 576, bits, 64, seed=11)
    bias = torch.randn(576)
    for dtype in (torch.bfloat16, torch.float32):
        monkeypatch.setitem(ql._MAX_GEMM_ROWS, (dtype, bits), max_gemm_rows)
        layer = QuantLinear(q, zeros, scales, g_idx, bits, bias, dtype)
        for rows in (1, 40):
            x = torch.randn(2, rows, 1536).to(dtype)  # any leading dims
            out = layer(x)
            assert out.shape == (2, rows, 576) and out.dtype == dtype
            _check(out, quant_linear_ref(x, q, zeros, scales, g_idx, bias), dtype)


def test_reference_is_dequantize_then_f_linear():
    q, zeros, scales, g_idx = _case(64, 16, 4, 16, seed=6)
    x = torch.randn(3, 64)
    w = torch.empty(16, 64)
    for o in range(16):
        for i in range(64):
            g = int(g_idx[i])
            w[o, i] = float(scales[g, o]) * (int(q[o, i]) - int(zeros[g, o]))
    torch.testing.assert_close(quant_linear_ref(x, q, zeros, scales, g_idx), x @ w.T)


def test_group_size_must_divide_in_features():
    q, zeros, scales, _ = _case(576, 64, 4, 64, seed=0)
    g_idx = torch.arange(576) // 128  # 4.5 groups of 128: the last one short
    zeros, scales = zeros[:5], scales[:5]
    with pytest.raises(ValueError, match="valid group sizes: 32, 64, -1"):
        QuantLinear(q, zeros, scales, g_idx, 4)
    with pytest.raises(ValueError, match="valid group sizes: 32, 64, -1"):
        ql.check_group_size(576, 128)
    assert ql.check_group_size(1536, 128) == 12 and ql.check_group_size(576, -1) == 1
    with pytest.raises(ValueError, match="bits"):
        QuantLinear(q, zeros, scales, g_idx, 3)


@pytest.mark.parametrize("packed", [pytest.param(True, marks=needs_packing), False])
def test_concat_equals_separate_outputs(monkeypatch, packed):
    if not packed:
        monkeypatch.setenv("LLMTOOL_CPU_KERNELS", "0")
    in_features = 576
    parts, refs = [], []
    _, _, _, g_idx = _case(in_features, 64, 4, 64, seed=100)  # shared act-order g_idx
    for n, out_features in enumerate((576, 192, 192)):
        q, zeros, scales, _ = _case(in_features, out_features, 4, 64, seed=n)
        bias = torch.randn(out_features) if n else None  # a part without bias: zeros in the fused bias
        parts.append(QuantLinear(q, zeros, scales, g_idx, 4, bias, torch.float32))
        refs.append((q, zeros, scales, g_idx, bias))
    fused = QuantLinear.concat(parts)
    assert fused.is_packed == packed and fused.out_features == 960
    for rows in (1, 300):
        x = torch.randn(rows, in_features)
        expected = torch.cat([p(x) for p in parts], -1)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        _check(fused(x), torch.cat([quant_linear_ref(x, *r) for r in refs], -1), torch.float32)


def test_concat_needs_a_shared_g_idx():
    a = QuantLinear(*_case(576, 64, 4, 64, seed=1), bits=4)
    b = QuantLinear(*_case(576, 64, 4, 64, seed=2), bits=4)
    with pytest.raises(ValueError, match="g_idx"):
        QuantLinear.concat([a, b])


def test_cpu_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LLMTOOL_CPU_KERNELS", "0")
    q, zeros, scales, g_idx = _case(576, 192, 4, 32, seed=3)
    bias = torch.randn(192)
    layer = QuantLinear(q, zeros, scales, g_idx, 4, bias, torch.bfloat16)
    assert not layer.is_packed
    x = torch.randn(5, 576, dtype=torch.bfloat16)
    assert torch.equal(layer(x), quant_linear_ref(x, q, zeros, scales, g_idx, bias))


def test_unsupported_shapes_fall_back_to_the_reference():
    q, zeros, scales, g_idx = _case(96, 40, 8, 32, seed=4)  # out not a multiple of 64
    layer = QuantLinear(q, zeros, scales, g_idx, 8, None, torch.bfloat16)
    assert not layer.is_packed
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    assert torch.equal(layer(x), quant_linear_ref(x, q, zeros, scales, g_idx))


def test_input_in_another_dtype_comes_back_in_that_dtype():
    q, zeros, scales, g_idx = _case(576, 192, 4, 64, seed=5, act_order=False)
    layer = QuantLinear(q, zeros, scales, g_idx, 4, None, torch.bfloat16)
    x = torch.randn(3, 576)
    _check(layer(x), quant_linear_ref(x, q, zeros, scales, g_idx), torch.bfloat16)
    assert layer(x).dtype == torch.float32
    assert layer(torch.randn(0, 576)).shape == (0, 192)
