// The gemm plan's fused kernels (kernels.cuh). Each is a warp per row: rows are independent (a NaN stays in its row),
// the row's reductions are shuffles in a fixed order (bitwise reproducible), and reads of a row are coalesced. They
// are memory-bound: each reads its (rows, Tk) float32 input once from DRAM (the softmax's second pass finds the row in
// L2) and writes its 16-bit or float32 output once.
#include "cuda/attention/gemm/kernels.cuh"

#include "cuda/attention/layernorm_row.cuh"
#include "cuda/common.cuh"
#include "kernel_limits.h"

namespace lstm_attn::gpu {
namespace {

constexpr int kRowsPerBlock = 4;  // a warp per row
constexpr int kThreads = 32 * kRowsPerBlock;

int row_blocks(int64_t rows) {
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  TORCH_CHECK(blocks <= INT32_MAX, "lstm_attn: too many rows for one launch: ", rows);
  return static_cast<int>(blocks);
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    softmax_kernel(const float* scores, int64_t rows, int Tk, float scale_log2, T* probs, float* lse) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % 32;
  const float* s = scores + row * Tk;
  // One pass of online softmax per lane, in log2 units: the running maximum m and the sum l of exp2(x - m).
  float m = -INFINITY, l = 0.f;
  for (int j = lane; j < Tk; j += 32) {
    const float x = s[j] * scale_log2;
    if (x > m) {
      l = l * exp2f(m - x) + 1.f;
      m = x;
    } else {
      l += exp2f(x - m);  // a NaN score lands here and makes the row's sum NaN
    }
  }
  const float row_max = group_max(m, 32);
  // A lane without columns (Tk < 32) holds m = -inf, l = 0 and adds 0.
  const float log2_sum = row_max + log2f(group_sum(l * exp2f(m - row_max), 32));
  T* p = probs + row * Tk;
  for (int j = lane; j < Tk; j += 32) p[j] = from_float<T>(exp2f(s[j] * scale_log2 - log2_sum));
  if (lane == 0) lse[row] = log2_sum * kLn2;
}

template <class T, int kPerLane>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    residual_layernorm_kernel(const float* o, const T* residual, const T* weight, const T* bias, int64_t rows, int H,
                              float eps, T* out, T* attn, float* mean, float* rstd) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // warp-uniform
  const int64_t g = row * H;
  float row_mean, row_rstd;
  residual_layernorm_row<T, kPerLane>(o + g, 1.f, residual + g, weight, bias, attn + g, out + g, H, eps, row_mean,
                                      row_rstd);
  if (threadIdx.x % 32 == 0) {
    mean[row] = row_mean;
    rstd[row] = row_rstd;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    softmax_bwd_kernel(const T* probs, const float* dp, const float* delta, int64_t rows, int Tk, float scale, T* ds) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // warp-uniform
  const float d = delta[row];
  const int64_t g = row * Tk;
  for (int j = threadIdx.x % 32; j < Tk; j += 32)
    ds[g + j] = from_float<T>(to_float(probs[g + j]) * (dp[g + j] - d) * scale);
}

}  // namespace

void gemm_softmax(const float* scores, int64_t rows, int Tk, float scale, void* probs, float* lse,
                  c10::ScalarType dtype, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(softmax_kernel<T>, row_blocks(rows), kThreads, 0, stream, scores, rows, Tk, scale * kLog2e,
           static_cast<T*>(probs), lse);
  });
}

void gemm_residual_layernorm(const float* o, const void* residual, const void* weight, const void* bias, int64_t rows,
                             int H, float eps, void* out, void* attn, float* mean, float* rstd, c10::ScalarType dtype,
                             cudaStream_t stream) {
  if (rows == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto run = [&](auto kernel) {
      launch(kernel, row_blocks(rows), kThreads, 0, stream, o, static_cast<const T*>(residual),
             static_cast<const T*>(weight), static_cast<const T*>(bias), rows, H, eps, static_cast<T*>(out),
             static_cast<T*>(attn), mean, rstd);
    };
    if (H <= 32) return run(residual_layernorm_kernel<T, 1>);
    if (H <= 64) return run(residual_layernorm_kernel<T, 2>);
    if (H <= 128) return run(residual_layernorm_kernel<T, 4>);
    if (H <= 256) return run(residual_layernorm_kernel<T, 8>);
    TORCH_CHECK(H <= kMaxHeadDim, "lstm_attn: the CUDA LayerNorm kernels take H up to ", kMaxHeadDim, ", got ", H);
    run(residual_layernorm_kernel<T, 16>);
  });
}

void gemm_softmax_bwd(const void* probs, const float* dp, const float* delta, int64_t rows, int Tk, float scale,
                      void* ds, c10::ScalarType dtype, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(softmax_bwd_kernel<T>, row_blocks(rows), kThreads, 0, stream, static_cast<const T*>(probs), dp, delta,
           rows, Tk, scale, static_cast<T*>(ds));
  });
}

}  // namespace lstm_attn::gpu
