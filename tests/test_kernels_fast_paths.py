"""CPU fast paths against their references (the native bf16 GEMV, the fused residual add +
RMSNorm, int4 from packed codes under the switch), the reference switch itself, and the
engine's greedy tokens with every op on its reference vs on its fast path (fp32)."""

import pytest
import torch
import torch.nn.functional as F

from llmtool.kernels import (
    add_rms_norm,
    add_rms_norm_ref,
    apply_rotary_ref,
    apply_rotary_signed,
    reference_kernels,
    signed_sin,
    use_fast_path,
)
from llmtool.kernels.cpu_ops import cpu_ops
from llmtool.kernels.linear import GEMV_MAX_ROWS, PackedLinear
from llmtool.kernels.quant_linear import QuantLinear, quant_linear_ref

BF16_ULP = 2.0**-7  # bf16's 8 significant bits: one ulp is at most 2^-7 of the value


def _has_gemv() -> bool:
    ops = cpu_ops()
    return ops is not None and ops.gemv_bf16_available()


@pytest.mark.parametrize("out_f, in_f", [(960, 576), (37, 17), (48, 1536), (16, 2)])
def test_native_gemv_matches_linear(out_f, in_f):
    """bf16 weights, fp32 accumulation, one rounding: within one bf16 rounding of the exact
    product (plus fp32 summation-order noise), at every row count the GEMV serves."""
    if not _has_gemv():
        pytest.skip("this CPU has no AVX512-BF16: the GEMV is not built")
    g = torch.Generator().manual_seed(out_f + in_f)
    w = torch.randn(out_f, in_f, generator=g).bfloat16()
    bias = torch.randn(out_f, generator=g).bfloat16()
    for with_bias in (False, True):
        layer = PackedLinear(w, bias if with_bias else None)
        assert layer.gemv is not None
        for rows in range(1, GEMV_MAX_ROWS + 1):
            x = torch.randn(rows, in_f, generator=g).bfloat16()
            got = layer(x)
            exact = F.linear(x.float(), w.float(), bias.float() if with_bias else None)
            torch.testing.assert_close(got.float(), exact, rtol=BF16_ULP / 2, atol=1e-4 * in_f**0.5)
            with reference_kernels():  # the switch takes oneDNN's product, the F.linear arithmetic
                ref = layer(x)
            torch.testing.assert_close(got.float(), ref.float(), rtol=BF16_ULP, atol=1e-4 * in_f**0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_fast_path(dtype):
    g = torch.Generator().manual_seed(3)
    for cols in (576, 7, 2048):
        x = torch.randn(5, cols, generator=g).to(dtype)
        r = torch.randn(5, cols, generator=g).to(dtype)
        w = (1 + 0.1 * torch.randn(cols, generator=g)).to(dtype)
        out, summed = add_rms_norm(x, r, w, 1e-6)
        want, want_sum = add_rms_norm_ref(x, r, w, 1e-6)
        assert torch.equal(summed, want_sum)  # one add, rounded to nearest like torch's
        if dtype == torch.float32:
            assert torch.equal(out, want)  # fp32 stays on torch's own reduction: bit-exact
        else:  # a different fp32 sum order may move the normalised value one ulp, then the scale
            torch.testing.assert_close(out.float(), want.float(), rtol=2 * BF16_ULP, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens", [1, 11])
def test_rotary_signed_is_the_reference_bit_for_bit(dtype, num_tokens):
    """fp32: 4 torch ops; bf16: the native kernel rounding where the reference's ops round."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(num_tokens, 5, 64, generator=g).to(dtype)
    ang = torch.randn(num_tokens, 32, generator=g) * 10
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dtype), torch.cat([ang.sin()] * 2, -1).to(dtype)
    assert torch.equal(apply_rotary_signed(x, cos, signed_sin(sin)), apply_rotary_ref(x, cos, sin))


def test_reference_switch_scopes_and_int4_reference_from_packed_codes():
    assert use_fast_path()
    with reference_kernels():
        assert not use_fast_path()
        with reference_kernels(False):
            assert use_fast_path()
    assert use_fast_path()
    g = torch.Generator().manual_seed(5)
    out_f, in_f, group = 128, 96, 32
    q = torch.randint(0, 16, (out_f, in_f), generator=g)
    zeros = torch.randint(0, 16, (in_f // group, out_f), generator=g)
    scales = torch.rand(in_f // group, out_f, generator=g) * 0.02
    g_idx = (torch.arange(in_f) // group)[torch.randperm(in_f, generator=g)]  # act-order
    layer = QuantLinear(q, zeros, scales, g_idx, 4, dtype=torch.float32)
    # Packed only where torch's int4 CPU layout is the one we read (AVX512); else the plain path.
    assert layer.is_packed == torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    x = torch.randn(3, in_f, generator=g)
    want = quant_linear_ref(x, q, zeros, scales, g_idx)
    with reference_kernels():
        got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # W rebuilt as codes * s + offset
    torch.testing.assert_close(layer(x), want, rtol=1e-3, atol=1e-3)  # the int4 kernel's own rounding


@pytest.mark.real_model
@pytest.mark.slow
def test_engine_greedy_tokens_identical_reference_vs_fast_fp32():
    """The issue's acceptance: switching every op between its reference and its fast path
    leaves the engine's greedy tokens unchanged in fp32, on the default model: prompts of
    different lengths batched (prefill, chunked prefill and decode all run)."""
    from llmtool.core.engine.config import EngineConfig
    from llmtool.core.engine.engine import Engine
    from llmtool.core.engine.sampling_params import SamplingParams
    from llmtool.core.models.aliases import DEFAULT_MODEL
    from llmtool.core.models.loader import load_model
    from llmtool.core.texts import play_text

    loaded = load_model(DEFAULT_MODEL, dtype="fp32", device="cpu")
    ids = loaded.tokenizer.encode(play_text("hamlet"))
    prompts = [ids[500 * i : 500 * i + n] for i, n in enumerate((3, 30, 90, 11))]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    config = EngineConfig(kv_cache_memory=64 * 1024**2, max_num_batched_tokens=48)  # chunks the 90
    fast = Engine(config, loaded=loaded).generate(prompts, params)
    with reference_kernels():
        ref = Engine(config, loaded=loaded).generate(prompts, params)
    for a, b in zip(fast, ref, strict=True):
        assert a.token_ids == b.token_ids
