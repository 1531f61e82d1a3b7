// Fused row-wise ops for CPUs: SwiGLU's silu(gate) * up, and RMSNorm.
//
// torch runs these as several bf16 elementwise passes, each converting to fp32 and back;
// on a 2-core CPU that cost more than the matmuls during prefill. Here each row is read
// once and computed in fp32, rounding where the torch formulas round so results match
// them. Specs: kernels/activation.py:silu_and_mul_ref, kernels/norm.py:rms_norm_ref.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
template <typename T>
inline T from_float(float x) { return static_cast<T>(x); }  // bf16: round to nearest even

template <typename T>
void silu_and_mul_kernel(const T* gate, const T* up, T* out, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) num_threads(rows > 1 ? at::get_num_threads() : 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = gate + r * cols;
    const T* u = up + r * cols;
    T* o = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float x = to_float(g[c]);
      // exp(-x) must not overflow: under -ffast-math x / (1 + inf) becomes a reciprocal
      // and a Newton step, 0 * inf = NaN, where silu is -0. Past -87 silu rounds to -0.
      const float e = std::exp(std::min(-x, 87.f));
      // Round silu to T first, as F.silu(gate) * up does.
      const float s = to_float(from_float<T>(x < -87.f ? -0.f : x / (1.f + e)));
      o[c] = from_float<T>(s * to_float(u[c]));
    }
  }
}

template <typename T>
void rms_norm_kernel(const T* x, const T* weight, T* out, int64_t rows, int64_t cols, double eps) {
#pragma omp parallel for schedule(static) num_threads(rows > 1 ? at::get_num_threads() : 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* o = out + r * cols;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < cols; ++c) sq += to_float(xr[c]) * to_float(xr[c]);
    const float inv = 1.f / std::sqrt(sq / cols + static_cast<float>(eps));
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      // HF: normalise in fp32, cast back to the input dtype, then scale by the weight.
      const float normed = to_float(from_float<T>(to_float(xr[c]) * inv));
      o[c] = from_float<T>(to_float(weight[c]) * normed);
    }
  }
}

// residual_out = x + residual (rounded to T, as torch's add), out = rms_norm(residual_out).
template <typename T>
void add_rms_norm_kernel(const T* x, const T* res, const T* weight, T* out, T* res_out, int64_t rows,
                         int64_t cols, double eps) {
#pragma omp parallel for schedule(static) num_threads(rows > 1 ? at::get_num_threads() : 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    const T* rr = res + r * cols;
    T* so = res_out + r * cols;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < cols; ++c) {
      const T s = from_float<T>(to_float(xr[c]) + to_float(rr[c]));
      so[c] = s;
      sq += to_float(s) * to_float(s);
    }
    const float inv = 1.f / std::sqrt(sq / cols + static_cast<float>(eps));
    T* o = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float normed = to_float(from_float<T>(to_float(so[c]) * inv));
      o[c] = from_float<T>(to_float(weight[c]) * normed);
    }
  }
}

}  // namespace

// Rotary embedding, rotate-half layout, with the sign folded into sin (kernels/rotary.py:
// apply_rotary_signed): out = x * cos + roll(x, D/2) * sin_signed, rounding to bf16 after
// each product and after the sum, as the three torch ops do. x [N, H, D]; cos, sin [N, D].
torch::Tensor rotary_signed(torch::Tensor x, torch::Tensor cos, torch::Tensor sin_signed) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && cos.scalar_type() == torch::kBFloat16 &&
                  sin_signed.scalar_type() == torch::kBFloat16 && x.dim() == 3,
              "bf16 x [N, H, D] only");
  auto xc = x.contiguous(), c = cos.contiguous(), sn = sin_signed.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t n = xc.size(0), h = xc.size(1), d = xc.size(2), half = d / 2;
  const auto* xp = xc.data_ptr<at::BFloat16>();
  const auto* cp = c.data_ptr<at::BFloat16>();
  const auto* sp = sn.data_ptr<at::BFloat16>();
  auto* op = out.data_ptr<at::BFloat16>();
  using T = at::BFloat16;
#pragma omp parallel for schedule(static) num_threads(n > 8 ? at::get_num_threads() : 1)
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < h; ++j) {
      const T* xr = xp + (t * h + j) * d;
      T* o = op + (t * h + j) * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        const int64_t r = i < half ? i + half : i - half;  // roll by D/2
        const float a = to_float(from_float<T>(to_float(xr[i]) * to_float(cp[t * d + i])));
        const float b = to_float(from_float<T>(to_float(xr[r]) * to_float(sp[t * d + i])));
        o[i] = from_float<T>(a + b);
      }
    }
  }
  return out;
}

std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.sizes() == residual.sizes() && x.scalar_type() == residual.scalar_type() &&
                  x.scalar_type() == weight.scalar_type() && weight.size(0) == x.size(-1),
              "x, residual and weight must match");
  auto xc = x.contiguous(), rc = residual.contiguous(), w = weight.contiguous();
  auto out = torch::empty_like(xc), res_out = torch::empty_like(xc);
  const int64_t cols = xc.size(-1), rows = xc.numel() / std::max<int64_t>(cols, 1);
  if (xc.scalar_type() == torch::kBFloat16) {
    add_rms_norm_kernel(xc.data_ptr<at::BFloat16>(), rc.data_ptr<at::BFloat16>(), w.data_ptr<at::BFloat16>(),
                        out.data_ptr<at::BFloat16>(), res_out.data_ptr<at::BFloat16>(), rows, cols, eps);
  } else {
    TORCH_CHECK(xc.scalar_type() == torch::kFloat, "bf16 or fp32 only");
    add_rms_norm_kernel(xc.data_ptr<float>(), rc.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(),
                        res_out.data_ptr<float>(), rows, cols, eps);
  }
  return {out, res_out};
}

torch::Tensor silu_and_mul(torch::Tensor gate, torch::Tensor up) {
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(), "gate and up must match");
  auto g = gate.contiguous(), u = up.contiguous();
  auto out = torch::empty_like(g);
  const int64_t cols = g.size(-1), rows = g.numel() / std::max<int64_t>(cols, 1);
  if (g.scalar_type() == torch::kBFloat16) {
    silu_and_mul_kernel(g.data_ptr<at::BFloat16>(), u.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, cols);
  } else {
    TORCH_CHECK(g.scalar_type() == torch::kFloat, "bf16 or fp32 only");
    silu_and_mul_kernel(g.data_ptr<float>(), u.data_ptr<float>(), out.data_ptr<float>(), rows, cols);
  }
  return out;
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && weight.size(0) == x.size(-1), "x and weight must match");
  auto xc = x.contiguous(), w = weight.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t cols = xc.size(-1), rows = xc.numel() / std::max<int64_t>(cols, 1);
  if (xc.scalar_type() == torch::kBFloat16) {
    rms_norm_kernel(xc.data_ptr<at::BFloat16>(), w.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, cols, eps);
  } else {
    TORCH_CHECK(xc.scalar_type() == torch::kFloat, "bf16 or fp32 only");
    rms_norm_kernel(xc.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), rows, cols, eps);
  }
  return out;
}
