// Decode attention straight from the paged KV cache, for CPUs.
//
// One query token per sequence. Each sequence's task reads its keys and values once, in
// place, through the block table: no gathered copy, which is what made the torch path
// memory-bound (gather, relayout, then attention: three passes over the KV). Two passes
// per task: scores for every head (then a softmax), then the weighted sum of values.
// Spec: kernels/paged_attention.py:paged_attention_ref.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const at::BFloat16* p, int64_t i) {
  // bf16 is the top half of an fp32: a shift, which the compiler vectorises.
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, int64_t i, float x) { p[i] = x; }
inline void store(at::BFloat16* p, int64_t i, float x) { p[i] = at::BFloat16(x); }

// Softmax of each of `rows` rows of `span` scores, in place.
// scale multiplies the scores here, in fp32, not q: q * scale rounded to bf16 for dpbf16
// would lose precision whenever scale is not a power of two (head_dim 96, 128).
inline void softmax_rows(float* scores, int64_t rows, int64_t span, float scale) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * span;
    const float mx = *std::max_element(s, s + span);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < span; ++i) {
      s[i] = std::exp((s[i] - mx) * scale);  // scale > 0 keeps the max; vectorised expf under -ffast-math
      sum += s[i];
    }
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < span; ++i) s[i] *= inv;
  }
}

// q . key over head_dim values, fp32 accumulation. The generic loop serves fp32 and any
// CPU; with AVX512-BF16 a bf16 key meets a bf16 copy of q in one dpbf16 per 32 values.
template <typename T>
inline float dot(const float* qf, const uint16_t* /*qb*/, const T* key, int64_t head_dim) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < head_dim; ++d) acc += qf[d] * load(key, d);
  return acc;
}

#if defined(__AVX512BF16__)
template <>
inline float dot<at::BFloat16>(const float* qf, const uint16_t* qb, const at::BFloat16* key, int64_t head_dim) {
  if (head_dim % 32 != 0) {
    float acc = 0.f;
    for (int64_t d = 0; d < head_dim; ++d) acc += qf[d] * load(key, d);
    return acc;
  }
  __m512 acc = _mm512_setzero_ps();
  const auto* k = reinterpret_cast<const uint16_t*>(key);
  for (int64_t d = 0; d < head_dim; d += 32) {
    __m512bh a = (__m512bh)_mm512_loadu_si512(qb + d);
    __m512bh b = (__m512bh)_mm512_loadu_si512(k + d);
    acc = _mm512_dpbf16_ps(acc, a, b);
  }
  return _mm512_reduce_add_ps(acc);
}
#endif


#if defined(__AVX512BF16__)
// Lane sums of 16 vectors in one vector: out[i] = sum(v[i]). A transpose-add tree (unpack,
// 64-bit unpack, 128-bit shuffles) costs ~2 instructions per vector, against ~8 for a
// separate horizontal sum each.
inline __m512 sum16(const __m512* v) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int j = 0; j < 4; ++j) {
    const __m512d x = _mm512_castps_pd(a[2 * j]), y = _mm512_castps_pd(a[2 * j + 1]);
    b[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x44), _mm512_shuffle_f32x4(b[0], b[1], 0xEE));
  const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x44), _mm512_shuffle_f32x4(b[2], b[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

// Scores of one sequence for head_dim 64 in bf16: 16 tokens at a time per query head, two
// dpbf16 per token, then one sum16. scores is [Hq, span]; rows[i] points at token start+i.
inline void scores_bf16_d64(const uint16_t* qb, const uint16_t* const* rows, int64_t span, int64_t num_heads,
                            int64_t group, float* scores) {
  for (int64_t hq = 0; hq < num_heads; ++hq) {
    const int64_t off = (hq / group) * 64;
    const __m512bh q0 = (__m512bh)_mm512_loadu_si512(qb + hq * 64);
    const __m512bh q1 = (__m512bh)_mm512_loadu_si512(qb + hq * 64 + 32);
    int64_t i = 0;
    for (; i + 16 <= span; i += 16) {
      __m512 acc[16];
      for (int t = 0; t < 16; ++t) {
        const uint16_t* k = rows[i + t] + off;
        acc[t] = _mm512_dpbf16_ps(_mm512_setzero_ps(), q0, (__m512bh)_mm512_loadu_si512(k));
        acc[t] = _mm512_dpbf16_ps(acc[t], q1, (__m512bh)_mm512_loadu_si512(k + 32));
      }
      _mm512_storeu_ps(scores + hq * span + i, sum16(acc));
    }
    for (; i < span; ++i) {
      const uint16_t* k = rows[i] + off;
      __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), q0, (__m512bh)_mm512_loadu_si512(k));
      acc = _mm512_dpbf16_ps(acc, q1, (__m512bh)_mm512_loadu_si512(k + 32));
      scores[hq * span + i] = _mm512_reduce_add_ps(acc);
    }
  }
}

// Weighted values for head_dim 64 in bf16 and groups of up to 4 query heads per KV head:
// the group's accumulators stay in registers and each value row is converted once.
inline void values_bf16_d64(const uint16_t* const* rows, const float* scores, int64_t span, int64_t num_kv_heads,
                            int64_t group, float* out) {
  for (int64_t h = 0; h < num_kv_heads; ++h) {
    __m512 acc[4][4];
    for (int g = 0; g < 4; ++g)
      for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < span; ++i) {
      const uint16_t* v = rows[i] + h * 64;
      __m512 vf[4];
      for (int c = 0; c < 4; ++c)
        vf[c] = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 16 * c)));
      for (int64_t g = 0; g < group; ++g) {
        const __m512 w = _mm512_set1_ps(scores[(h * group + g) * span + i]);
        for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_fmadd_ps(w, vf[c], acc[g][c]);
      }
    }
    for (int64_t g = 0; g < group; ++g)
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + (h * group + g) * 64 + 16 * c, acc[g][c]);
  }
}
#endif

template <typename T>
void decode_kernel(const T* q, const T* k_cache, const T* v_cache, const int64_t* block_tables,
                   const int64_t* seq_lens, T* out, int64_t num_seqs, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks,
                   double scale, int64_t window) {
  const int64_t group = num_heads / num_kv_heads;  // query head hq reads KV head hq / group
  const int64_t token_stride = num_kv_heads * head_dim;  // cache is [blocks, block_size, Hk, D]
  // One task per sequence: a token's keys for all KV heads are one contiguous row, read
  // once and in order (per-head tasks read every Hk-th slice and defeat the prefetcher).
  // Dynamic scheduling: sequence lengths differ by 10x, equal-count halves idle a thread.
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> qf(num_heads * head_dim), scores, acc(num_heads * head_dim);
    std::vector<uint16_t> qb(num_heads * head_dim);  // q (scaled) rounded to bf16, for dpbf16
    std::vector<float> vf(head_dim);  // one value row of one KV head, in fp32
    std::vector<const uint16_t*> krows, vrows;  // per-token row pointers (bf16 fast path)
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < num_seqs; ++b) {
      const int64_t len = seq_lens[b];
      const int64_t start = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t span = len - start;
      const int64_t* table = block_tables + b * max_blocks;
      for (int64_t i = 0; i < num_heads * head_dim; ++i) {
        const float x = load(q, b * num_heads * head_dim + i);
        qf[i] = x;
        const at::BFloat16 xb(x);
        std::memcpy(&qb[i], &xb, sizeof(uint16_t));
      }
      scores.assign(num_heads * span, 0.f);  // [Hq, span]
#if defined(__AVX512BF16__)
      constexpr bool is_bf16 = std::is_same_v<T, at::BFloat16>;
      if (is_bf16 && head_dim == 64 && group <= 4) {
        // Row pointers once per sequence; both passes walk them in token order.
        krows.resize(span);
        vrows.resize(span);
        for (int64_t p = start; p < len; ++p) {
          const int64_t slot = table[p / block_size] * block_size + p % block_size;
          krows[p - start] = reinterpret_cast<const uint16_t*>(k_cache + slot * token_stride);
          vrows[p - start] = reinterpret_cast<const uint16_t*>(v_cache + slot * token_stride);
        }
        scores_bf16_d64(qb.data(), krows.data(), span, num_heads, group, scores.data());
        softmax_rows(scores.data(), num_heads, span, static_cast<float>(scale));
        values_bf16_d64(vrows.data(), scores.data(), span, num_kv_heads, group, acc.data());
        for (int64_t i = 0; i < num_heads * head_dim; ++i) store(out, b * num_heads * head_dim + i, acc[i]);
        continue;
      }
#endif
      for (int64_t p = start; p < len; ++p) {
        const T* row = k_cache + (table[p / block_size] * block_size + p % block_size) * token_stride;
        for (int64_t hq = 0; hq < num_heads; ++hq)
          scores[hq * span + (p - start)] =
              dot(qf.data() + hq * head_dim, qb.data() + hq * head_dim, row + (hq / group) * head_dim, head_dim);
      }
      softmax_rows(scores.data(), num_heads, span, static_cast<float>(scale));
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t p = start; p < len; ++p) {
        const T* row = v_cache + (table[p / block_size] * block_size + p % block_size) * token_stride;
        for (int64_t h = 0; h < num_kv_heads; ++h) {
          // Convert the value once per KV head; its `group` query heads all reuse it.
          const T* value = row + h * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) vf[d] = load(value, d);
          for (int64_t g = 0; g < group; ++g) {
            const int64_t hq = h * group + g;
            const float w = scores[hq * span + (p - start)];
            float* a = acc.data() + hq * head_dim;
#pragma omp simd
            for (int64_t d = 0; d < head_dim; ++d) a[d] += w * vf[d];
          }
        }
      }
      for (int64_t i = 0; i < num_heads * head_dim; ++i) store(out, b * num_heads * head_dim + i, acc[i]);
    }
  }
}

}  // namespace

// q [B, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hk, D]; block_tables [B, max_blocks]
// int64; seq_lens [B] int64 (keys per sequence, the new token included); window <= 0: none.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor seq_lens, double scale,
                                     int64_t window) {
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q and cache dtypes differ");
  auto tables = block_tables.to(torch::kLong).contiguous();
  auto lens = seq_lens.to(torch::kLong).contiguous();
  auto out = torch::empty_like(q);
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t bs = k_cache.size(1), Hk = k_cache.size(2);
  if (q.scalar_type() == torch::kBFloat16) {
    decode_kernel(q.data_ptr<at::BFloat16>(), k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>(),
                  tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), out.data_ptr<at::BFloat16>(), B, Hq, Hk,
                  D, bs, tables.size(1), scale, window);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kFloat, "bf16 or fp32 only");
    decode_kernel(q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                  tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), out.data_ptr<float>(), B, Hq, Hk, D, bs,
                  tables.size(1), scale, window);
  }
  return out;
}
