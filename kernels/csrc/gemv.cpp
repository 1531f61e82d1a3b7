// bf16 weight GEMV for decode on CPUs with AVX512-BF16: y [M, out] = x [M, in] @ W^T (+ bias).
//
// At a few rows a linear layer is a pass over its weight: time = bytes / bandwidth. oneDNN's
// bf16 kernels reach 10-20 GB/s there on this machine; this one streams the weight once, in
// the order it sits in memory, at close to the copy bandwidth. The weight is repacked once
// (kernels/linear.py) into [out / 16, in / 2, 16, 2] bf16: one 64-byte load holds 2 inputs of
// 16 outputs, which is exactly what one _mm512_dpbf16_ps consumes with the input pair
// broadcast. No horizontal sums; each output block is one contiguous run of memory.
// Spec: kernels/linear.py:linear_ref (F.linear; fp32 accumulation, one rounding to bf16).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>

namespace {

// Output block b (16 outputs) for MR rows of x (MR <= 4): one contiguous stream of weight.
template <int MR>
void gemv_block(const uint16_t* x, int64_t x_stride, const uint16_t* w, const float* bias,
                uint16_t* y, int64_t y_stride, int64_t pairs, int64_t out_features, int64_t b) {
  {
    const uint16_t* wb = w + b * pairs * 32;  // [pairs, 16, 2]
    __m512 acc[MR][2];
    for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    int64_t k = 0;
    // Two independent chains per row hide dpbf16's latency.
    for (; k + 2 <= pairs; k += 2) {
      // Software prefetch 2 KiB ahead, across block ends (the blocks are one contiguous
      // stream): the hardware prefetcher alone left single-core streaming at ~10 GB/s here.
      _mm_prefetch(reinterpret_cast<const char*>(wb + k * 32 + 1024), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wb + k * 32 + 1056), _MM_HINT_T0);
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wb + k * 32);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wb + k * 32 + 32);
      for (int m = 0; m < MR; ++m) {
        int32_t p0, p1;
        std::memcpy(&p0, x + m * x_stride + 2 * k, 4);
        std::memcpy(&p1, x + m * x_stride + 2 * k + 2, 4);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)_mm512_set1_epi32(p0), w0);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], (__m512bh)_mm512_set1_epi32(p1), w1);
      }
    }
    if (k < pairs) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wb + k * 32);
      for (int m = 0; m < MR; ++m) {
        int32_t p0;
        std::memcpy(&p0, x + m * x_stride + 2 * k, 4);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)_mm512_set1_epi32(p0), w0);
      }
    }
    const int64_t o0 = b * 16;
    const int64_t n = std::min<int64_t>(16, out_features - o0);
    const __mmask16 mask = n == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + o0) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]), bv);
      // Round to nearest even, as a float -> bf16 cast does.
      const __m256i r = (__m256i)_mm512_cvtneps_pbh(s);
      _mm256_mask_storeu_epi16(y + m * y_stride + o0, mask, r);
    }
  }
}

}  // namespace
#endif

bool gemv_bf16_available() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// x [M, in] bf16 (in even; a tail input pair zero-padded by the packer); w_packed
// [out_pad / 16, in / 2, 16, 2] bf16; bias [out] fp32 or empty. Returns [M, out] bf16.
torch::Tensor gemv_bf16(torch::Tensor x, torch::Tensor w_packed, torch::Tensor bias, int64_t out_features) {
#if defined(__AVX512BF16__)
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w_packed.scalar_type() == torch::kBFloat16, "bf16 only");
  TORCH_CHECK(x.dim() == 2 && w_packed.dim() == 4 && w_packed.is_contiguous(), "x [M, in], packed weight 4-D");
  auto xc = x.contiguous();
  const int64_t rows = xc.size(0), pairs = w_packed.size(1), num_blocks = w_packed.size(0);
  TORCH_CHECK(xc.size(1) == 2 * pairs, "x has ", xc.size(1), " inputs, the weight ", 2 * pairs);
  TORCH_CHECK(num_blocks * 16 >= out_features, "packed weight too small");
  const float* bp = nullptr;
  torch::Tensor bf;
  if (bias.defined() && bias.numel() > 0) {
    bf = bias.to(torch::kFloat).contiguous();
    bp = bf.data_ptr<float>();
  }
  auto y = torch::empty({rows, out_features}, xc.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w_packed.data_ptr<at::BFloat16>());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  // Grain: a task should stream at least ~64 KiB so thread start-up stays small beside it.
  const int64_t block_bytes = pairs * 64;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(block_bytes, 1));
  at::parallel_for(0, num_blocks, grain, [&](int64_t b0, int64_t b1) {
    // Rows in chunks of 4 inside each block: a block (<= tens of KiB) stays in L1/L2 while
    // the chunks re-read it, so the weight comes from memory once whatever the row count.
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t m = 0; m < rows; m += 4) {
        const int64_t mr = std::min<int64_t>(4, rows - m);
        const uint16_t* xm = xp + m * 2 * pairs;
        uint16_t* ym = yp + m * out_features;
        switch (mr) {
          case 4: gemv_block<4>(xm, 2 * pairs, wp, bp, ym, out_features, pairs, out_features, b); break;
          case 3: gemv_block<3>(xm, 2 * pairs, wp, bp, ym, out_features, pairs, out_features, b); break;
          case 2: gemv_block<2>(xm, 2 * pairs, wp, bp, ym, out_features, pairs, out_features, b); break;
          default: gemv_block<1>(xm, 2 * pairs, wp, bp, ym, out_features, pairs, out_features, b);
        }
      }
    }
  });
  return y;
#else
  TORCH_CHECK(false, "gemv_bf16 needs a CPU with AVX512-BF16");
  return x;
#endif
}
