// The Python module of llmtool's native CPU kernels (see kernels/cpu_ops.py).
#include <torch/extension.h>

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor seq_lens, double scale,
                                     int64_t window);
torch::Tensor silu_and_mul(torch::Tensor gate, torch::Tensor up);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention on a paged KV cache");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up, fused");
  m.def("rms_norm", &rms_norm, "RMSNorm with transformers' rounding, fused");
}
