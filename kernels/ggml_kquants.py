"""ggml's K-quant quantizers (Q2_K .. Q6_K) in numpy: float32 rows to ggml's block bytes.

gguf-py reads K-quants but cannot write them. These follow llama.cpp's reference quantizers
(quantize_row_q*_K_ref and helpers in ggml/src/ggml-quants.c: the path llama-quantize takes
without an importance matrix) step for step, vectorised over all blocks at once; the only
Python loops run over the small fixed search grids and over the 16 or 32 weights of a
sub-block. Float32 arithmetic is done in ggml's order (sums accumulate element by element,
products associate left to right, no fused multiply-add: libggml-base is built for plain
x86-64), and ggml's handling of degenerate groups (zero, constant, denormal, overflowing) is
kept, so the bytes equal llama.cpp's: every block in our tests, random, corner-case and real
weights alike; only NaN weights give blocks that may differ (garbage on both sides).
Not here: importance-matrix quantization, the IQ types, dequantization
(gguf.quants.dequantize reads these blocks back).
Block layouts: ../shared/REFERENCE.md and ggml-common.h.
"""

from collections.abc import Callable

import gguf
import numpy as np

QK_K = 256  # weights per super-block
_GROUP_MAX_EPS = np.float32(1e-15)  # ggml: a group whose largest |x| is below this is all zero
_ROUND = np.float32(12582912.0)  # 1.5 * 2**23: adding it rounds a float32 to an integer, ties to even
_CHUNK_BLOCKS = 512  # super-blocks per pass: keeps the temporaries in cache and memory flat
_f32 = np.float32


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: the integer bits of v + 1.5 * 2**23 (also for the
    out-of-range arguments it garbles, so a later clamp sees what ggml's sees)."""
    return ((v + _ROUND).view(np.int32) & 0x7FFFFF) - 0x400000


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order, as ggml's `for (i ...) sum += ...` rounds. Reducing a
    leading axis makes numpy add whole rows one after another; summing along the last axis
    would pair terms up (pairwise summation) and round differently."""
    return np.add.reduce(a, axis=0)


def _columns(x: np.ndarray, n: int) -> np.ndarray:
    """Super-blocks [B, 256] as sub-blocks of n weights in columns: [n, B * 256 // n]."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _first_absmax(a: np.ndarray, axis: int) -> np.ndarray:
    """ggml's `amax = 0; if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`: the signed value
    of largest magnitude, the first on ties, 0 when none is above 0 (a NaN never wins)."""
    mag = np.nan_to_num(np.abs(a), nan=0.0)
    i = np.expand_dims(mag.argmax(axis), axis)
    best = np.take_along_axis(a, i, axis).squeeze(axis)
    return np.where(np.take_along_axis(mag, i, axis).squeeze(axis) > 0, best, 0).astype(a.dtype)


def _positive_max(a: np.ndarray) -> np.ndarray:
    """Row maximum if positive, else +0 (ggml: `max = 0; if (v > max) max = v`; never -0.0)."""
    m = a.max(1)
    return np.where(m > 0, m, _f32(0))


def _fp16(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's FP32_TO_FP16 (round to nearest even, like numpy's): (bytes [B, 2], value as float32)."""
    h = v.astype(np.float16)
    return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def _bits(q: np.ndarray, width: int) -> np.ndarray:
    """OR of q[..., k, :] << (width * k) over k: ggml's way of packing small fields into bytes."""
    shifts = (np.arange(q.shape[-2], dtype=np.uint8) * np.uint8(width))[:, None]
    return np.bitwise_or.reduce(q.astype(np.uint8) << shifts, axis=-2)


def _requantize(x, L, d, dm, lo: int, hi: int) -> np.ndarray:
    """ggml's last pass: each weight rounded against its sub-block's STORED scale d (fp16 super
    scale x small integer) and min dm, offset to be non-negative. Sub-blocks whose stored scale
    is zero keep the quants of the search. x, L [B, 256]; d, dm [B, subs] -> uint8 [B, 256]."""
    B, subs = d.shape
    xs = x.reshape(B, subs, -1)  # [B, subs, n]
    if dm is not None:
        xs = xs + dm[..., None]
    q = np.clip(_nearest_int(xs / d[..., None]), lo, hi) - lo
    return np.where(d[..., None] != 0, q, L.reshape(B, subs, -1)).reshape(B, QK_K).astype(np.uint8)


# ---- ggml's per-sub-block searches, on sub-blocks in columns: x [n, S] ----


def _make_qkx2_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """make_qkx2_quants: x ~ scale * L - the_min with L in 0..nmax. Tries nstep + 1 scales
    around nmax / range, each followed by a weighted least-squares fit of (scale, min), and
    keeps the fit of lowest weighted error (absolute if use_mad, else squared).
    -> (L [n, S] float32, scale [S], the_min [S]). The hot loop: works in place on scratch."""
    err = np.abs if use_mad else np.square
    mx = x.max(0)
    mn0 = np.minimum(x.min(0), 0)
    iscale = _f32(nmax) / (mx - mn0)
    # a constant group, or one so narrow (denormal) that iscale overflows: ggml's quants all
    # round to 0 (its nearest_int maps inf and NaN to 0), nothing fits better, scale stays 0
    flat = (mx == mn0) | ~np.isfinite(iscale)
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    cand, wl, t = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def quants(iscale, mn, out):  # nearest_int(iscale * (x - min)) clamped to 0..nmax
        np.subtract(x, mn, out=out)
        out *= iscale
        np.rint(out, out=out)  # = nearest_int here: |argument| stays near nmax
        return np.clip(out, 0, nmax, out=out)

    def error(scale, mn, q):  # sum of w * err(scale * q + min - x), in ggml's order
        np.multiply(q, scale, out=t)
        np.add(t, mn, out=t)  # (not t += ...: that would make t local to this function)
        np.subtract(t, x, out=t)
        err(t, out=t)
        return _seq_sum(np.multiply(t, w, out=t))

    scale = _f32(1) / iscale
    L = quants(iscale, mn0, np.empty_like(x))
    best = error(scale, mn0, L)
    mn = mn0
    for step in range(nstep + 1):
        # ggml moves min to the best fit so far, and the grid follows it
        iscale = (_f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)) / (mx - mn)
        quants(iscale, mn, cand)
        np.multiply(w, cand, out=wl)
        sum_l = _seq_sum(wl)
        sum_l2 = _seq_sum(np.multiply(wl, cand, out=t))
        sum_xl = _seq_sum(np.multiply(wl, x, out=t))
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0  # a min above zero is clamped to zero and the scale refit
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        this_min = np.where(positive, _f32(0), this_min)
        cur = error(this_scale, this_min, cand)
        better = (D > 0) & (cur < best)
        np.copyto(L, cand, where=better)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L[:, flat] = 0
    return L, np.where(flat, _f32(0), scale), -np.where(flat, mn0, mn)


def _make_qx_quants(x, nmax: int):
    """make_qx_quants with rmse_type 1 and no importance: symmetric x ~ scale * (L - nmax),
    weights x^2; tries 19 scales around -nmax / max (the signed largest weight) and keeps the
    best least-squares fit. -> (L [n, S] float32 in 0..2 nmax - 1, scale [S])."""
    xmax = _first_absmax(x, 0)
    zero = np.abs(xmax) < _GROUP_MAX_EPS
    w = x * x
    wx = w * x

    def fit(iscale):
        q = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)
        return q, _seq_sum(wx * q), _seq_sum(w * q * q)

    L, sumlx, suml2 = fit(_f32(-nmax) / xmax)
    scale = np.where(suml2 != 0, sumlx / suml2, _f32(0))
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        cand, sumlx, suml2 = fit(-(_f32(nmax) + _f32(0.1) * _f32(step)) / xmax)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, cand, L)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    L += nmax
    L[:, zero] = 0
    return L, np.where(zero, _f32(0), scale)


def _make_q3_quants(x, nmax: int):
    """make_q3_quants with do_rmse: symmetric start at -nmax / max, then up to 5 sweeps of
    coordinate descent, one weight at a time, on the x^2-weighted fit (sequential within a
    sub-block, so the loop runs over the n weights, vectorised over sub-blocks).
    -> (L [n, S] float32 in 0..2 nmax - 1, scale [S])."""
    xmax = _first_absmax(x, 0)
    zero = np.abs(xmax) < _GROUP_MAX_EPS
    L = np.clip(_nearest_int(_f32(-nmax) / xmax * x), -nmax, nmax - 1).astype(np.float32)
    w = x * x
    wx = w * x
    sumlx, suml2 = _seq_sum(wx * L), _seq_sum(w * L * L)
    for _ in range(5):
        changed = False
        for i in range(len(x)):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new = np.clip(_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1).astype(np.float32)
            slx_new = slx + wx[i] * new
            sl2_new = sl2 + w[i] * new * new
            take = (slx > 0) & (new != li) & (sl2_new > 0)
            take &= slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new
            L[i] = np.where(take, new, li)
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
            changed = changed or bool(take.any())
        if not changed:  # ggml stops each sub-block after a sweep without change; a repeat
            break  # of such a sweep changes nothing either, so one global stop is the same
    L += nmax
    L[:, zero] = 0
    return L, np.where(zero | (suml2 <= 0), _f32(0), sumlx / suml2)


# ---- the block types: x [B, 256] float32 -> uint8 [B, block bytes] ----


def _q2_k(x: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16: 2-bit quants, 4-bit scale and min each, fp16 d and dmin."""
    B = len(x)
    xc = _columns(x, 16)
    L, scales, mins = _make_qkx2_quants(xc, np.abs(xc), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(B, 16), mins.reshape(B, 16)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    ls = np.where(max_scale[:, None] > 0, _nearest_int((_f32(15) / max_scale)[:, None] * scales), 0)
    lm = np.where(max_min[:, None] > 0, _nearest_int((_f32(15) / max_min)[:, None] * mins), 0)
    sc = (ls | (lm << 4)).astype(np.uint8)  # ggml stores ints into uint8_t: wrap, not clamp
    d_bytes, d = _fp16(np.where(max_scale > 0, max_scale / _f32(15), _f32(0)))
    m_bytes, dmin = _fp16(np.where(max_min > 0, max_min / _f32(15), _f32(0)))
    L = _requantize(x, L.T, d[:, None] * (sc & 15), dmin[:, None] * (sc >> 4), 0, 3)
    qs = _bits(L.reshape(B, 2, 4, 32), 2).reshape(B, 64)
    return np.concatenate([sc, qs, d_bytes, m_bytes], axis=1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16: 3-bit quants (2 low bits + a high-bit mask), 6-bit signed scales, fp16 d."""
    B = len(x)
    L, scales = _make_q3_quants(_columns(x, 16), 4)
    scales = scales.reshape(B, 16)
    max_scale = _first_absmax(scales, 1)
    nonzero = max_scale != 0
    iscale = _f32(-32) / max_scale
    l8 = _nearest_int(iscale[:, None] * scales).astype(np.int8)  # ggml: int8_t l = nearest_int(...)
    ls = np.where(nonzero[:, None], np.clip(l8, -32, 31) + 32, 0).astype(np.uint8)
    d_bytes, d = _fp16(np.where(nonzero, _f32(1) / iscale, _f32(0)))
    L = _requantize(x, L.T, d[:, None] * (ls.astype(np.float32) - 32), None, -4, 3)
    hmask = _bits((L >> 2).reshape(B, 8, 32), 1)
    qs = _bits((L & 3).reshape(B, 2, 4, 32), 2).reshape(B, 64)
    sc = np.concatenate([_bits((ls & 15).reshape(B, 2, 8), 4), _bits((ls >> 4).reshape(B, 4, 4), 2)], axis=1)
    return np.concatenate([hmask, qs, sc, d_bytes], axis=1)


def _scale_min_k(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and min against fp16 d and dmin.
    -> (header bytes [B, 16]: d, dmin, 12 packed scale/min bytes; quants L [B, 256])."""
    B = len(x)
    xc = _columns(x, 32)
    av_x = np.sqrt(_seq_sum(xc * xc) / _f32(32))
    L, scales, mins = _make_qkx2_quants(xc, av_x + np.abs(xc), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(B, 8), mins.reshape(B, 8)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    inv_scale = np.where(max_scale > 0, _f32(63) / max_scale, _f32(0))
    inv_min = np.where(max_min > 0, _f32(63) / max_min, _f32(0))
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales).astype(np.uint8), 63)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins).astype(np.uint8), 63)
    d_bytes, d = _fp16(max_scale / _f32(63))
    m_bytes, dmin = _fp16(max_min / _f32(63))
    L = _requantize(x, L.T, d[:, None] * ls, dmin[:, None] * lm, 0, nmax)
    # get_scale_min_k4's packing: sub-blocks 0-3 in the low 6 bits of bytes 0-7, sub-blocks 4-7
    # split into low nibbles (bytes 8-11) and 2 high bits on top of bytes 0-7
    hi, lo = ls[:, 4:], lm[:, 4:]
    sc = np.concatenate(
        [ls[:, :4] | (hi >> 4) << 6, lm[:, :4] | (lo >> 4) << 6, (hi & 15) | (lo & 15) << 4], axis=1
    )
    return np.concatenate([d_bytes, m_bytes, sc], axis=1), L


def _q4_k(x: np.ndarray) -> np.ndarray:
    """8 sub-blocks of 32: 4-bit quants (byte j: quant j | quant j + 32 << 4 per 64 weights)."""
    B = len(x)
    header, L = _scale_min_k(x, 15, -1.0, 20)
    qs = _bits(L.reshape(B, 4, 2, 32), 4).reshape(B, 128)
    return np.concatenate([header, qs], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    """8 sub-blocks of 32: Q4_K's nibbles plus a fifth bit per weight in 32 bytes of qh."""
    B = len(x)
    header, L = _scale_min_k(x, 31, -0.5, 15)
    qh = _bits((L >> 4).reshape(B, 8, 32), 1)
    qs = _bits((L & 15).reshape(B, 4, 2, 32), 4).reshape(B, 128)
    return np.concatenate([header, qh, qs], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16: 6-bit quants (4 low bits + 2 high), int8 scales, fp16 d."""
    B = len(x)
    L, scales = _make_qx_quants(_columns(x, 16), 32)
    scales = scales.reshape(B, 16)
    max_scale = _first_absmax(scales, 1)
    zero = np.abs(max_scale) < _GROUP_MAX_EPS
    iscale = _f32(-128) / max_scale
    d_bytes, d = _fp16(_f32(1) / iscale)
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales)).astype(np.int8)
    L = _requantize(x, L.T, d[:, None] * sc, None, -32, 31)
    low = (L & 15).reshape(B, 2, 2, 2, 32).swapaxes(2, 3)  # [B, half, pair, nibble, 32]
    ql = _bits(low, 4).reshape(B, 128)
    qh = _bits((L >> 4).reshape(B, 2, 4, 32), 2).reshape(B, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=1)
    out[zero] = 0  # ggml zeroes the whole block
    return out


_QUANTIZERS: dict[gguf.GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    gguf.GGMLQuantizationType.Q2_K: _q2_k,
    gguf.GGMLQuantizationType.Q3_K: _q3_k,
    gguf.GGMLQuantizationType.Q4_K: _q4_k,
    gguf.GGMLQuantizationType.Q5_K: _q5_k,
    gguf.GGMLQuantizationType.Q6_K: _q6_k,
}
KQUANT_TYPES = frozenset(_QUANTIZERS)


def quantize_kquant(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> uint8 [rows, cols // 256 * block bytes]
    in ggml's block layout of `qtype` (one of KQUANT_TYPES), as llama-quantize writes it
    without an importance matrix."""
    qtype = gguf.GGMLQuantizationType(qtype)
    if qtype not in _QUANTIZERS:
        raise ValueError(f"not a K-quant type: {qtype.name} (have {sorted(t.name for t in KQUANT_TYPES)})")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] % QK_K:
        raise ValueError(f"K-quants need a 2-D array with rows a multiple of {QK_K} long, got {data.shape}")
    rows, cols = data.shape
    blocks = data.reshape(-1, QK_K)
    out = np.empty((len(blocks), gguf.GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    quantize = _QUANTIZERS[qtype]
    # divisions by zero, overflow and NaNs arise only in degenerate groups (all zero, constant,
    # denormal, huge), whose results are then overridden or garbled exactly as ggml's are
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, len(blocks), _CHUNK_BLOCKS):
            out[start : start + _CHUNK_BLOCKS] = quantize(blocks[start : start + _CHUNK_BLOCKS])
    return out.reshape(rows, cols // QK_K * out.shape[1])
