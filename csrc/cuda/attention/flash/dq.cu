// The flash backward's last step: grad_q = scale * the float32 dQ its key blocks added up, rounded to the input dtype.
#include <algorithm>

#include "cuda/attention/flash/flash.cuh"

namespace lstm_attn::gpu::flash {
namespace {

constexpr int kConvertThreads = 256;

template <class T>
__global__ void __launch_bounds__(kConvertThreads, kMinBlocksPerSm)
    dq_convert_kernel(const float* dq_accum, int64_t n, float scale, T* grad_q) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kConvertThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kConvertThreads)
    grad_q[i] = from_float<T>(dq_accum[i] * scale);
}

}  // namespace

void dq_convert(const float* dq_accum, int64_t n, float scale, void* grad_q, c10::ScalarType dtype,
                cudaStream_t stream) {
  if (n == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kConvertThreads - 1) / kConvertThreads, 65536));
  if (dtype == c10::ScalarType::Half) {
    launch(dq_convert_kernel<__half>, blocks, kConvertThreads, 0, stream, dq_accum, n, scale,
           static_cast<__half*>(grad_q));
  } else {
    launch(dq_convert_kernel<__nv_bfloat16>, blocks, kConvertThreads, 0, stream, dq_accum, n, scale,
           static_cast<__nv_bfloat16*>(grad_q));
  }
}

}  // namespace lstm_attn::gpu::flash
