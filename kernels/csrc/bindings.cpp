// The Python module of llmtool's native CPU kernels (see kernels/cpu_ops.py).
//
// One translation unit: each one re-parses torch's headers (~20 s here), so including the
// kernel files halves the first-use build on a 2-core machine.
#include <torch/extension.h>

#include "elementwise.cpp"
#include "gemv.cpp"
#include "paged_decode.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention on a paged KV cache");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up, fused");
  m.def("gemv_bf16", &gemv_bf16, "bf16 GEMV on a [out/16, in/2, 16, 2] packed weight");
  m.def("gemv_bf16_available", &gemv_bf16_available, "built with AVX512-BF16");
  m.def("add_rms_norm", &add_rms_norm, "residual add + RMSNorm, fused");
  m.def("rotary_signed", &rotary_signed, "rotary embedding with a pre-signed sin, bf16");
  m.def("rms_norm", &rms_norm, "RMSNorm with transformers' rounding, fused");
}
