// The step-by-step plan's elementwise steps on CUDA (see csrc/cpu/lstm.h): a thread per (batch row, unit) running the
// cell of csrc/lstm_cell.h. Simple on purpose: the plan for sizes the fused kernels do not take, and the yardstick
// they are checked against.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>

#include "cpu/lstm.h"
#include "cuda/common.cuh"
#include "lstm_cell.h"

namespace lstm_attn::gpu::lstm {
namespace {

constexpr int kStepThreads = 256;

template <class T>
__global__ void step_forward_kernel(float* pre, const float* c_prev, float* c, T* h, int64_t cells, int H) {
  const int64_t i = int64_t(blockIdx.x) * kStepThreads + threadIdx.x;
  if (i >= cells) return;
  const int u = static_cast<int>(i % H);
  float* row = pre + i / H * 4 * H;
  const auto r = cell::forward(row[u], row[H + u], row[2 * H + u], row[3 * H + u], c_prev[i]);
  row[u] = r.i;
  row[H + u] = r.f;
  row[2 * H + u] = r.g;
  row[3 * H + u] = r.o;
  c[i] = r.c;
  h[i] = from_float<T>(r.h);
}

template <class T>
__global__ void step_backward_kernel(const float* gates, const float* c, const float* c_prev, const float* dh,
                                     float* dc, T* d_pre, int64_t cells, int H) {
  const int64_t i = int64_t(blockIdx.x) * kStepThreads + threadIdx.x;
  if (i >= cells) return;
  const int u = static_cast<int>(i % H);
  const int64_t row = i / H * 4 * H;
  const float* g = gates + row;
  const auto r = cell::backward(g[u], g[H + u], g[2 * H + u], g[3 * H + u], c[i], c_prev[i], dh[i], dc[i]);
  d_pre[row + u] = from_float<T>(r.d_i);
  d_pre[row + H + u] = from_float<T>(r.d_f);
  d_pre[row + 2 * H + u] = from_float<T>(r.d_g);
  d_pre[row + 3 * H + u] = from_float<T>(r.d_o);
  dc[i] = r.dc_carry;
}

int step_blocks(int64_t cells) {
  TORCH_CHECK(cells <= int64_t(INT_MAX) * kStepThreads, "lstm_attn: B * H = ", cells, " is too large for one step");
  return static_cast<int>((cells + kStepThreads - 1) / kStepThreads);
}

void step_forward(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& h) {
  const int64_t cells = c.numel();
  if (cells == 0) return;
  dispatch_dtype(h.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(step_forward_kernel<T>, step_blocks(cells), kStepThreads, 0, c10::cuda::getCurrentCUDAStream(),
           pre.data_ptr<float>(), c_prev.data_ptr<float>(), c.data_ptr<float>(), static_cast<T*>(h.data_ptr()), cells,
           static_cast<int>(c.size(1)));
  });
}

void step_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev, const at::Tensor& dh,
                   const at::Tensor& dc, const at::Tensor& d_pre) {
  const int64_t cells = c.numel();
  if (cells == 0) return;
  dispatch_dtype(d_pre.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(step_backward_kernel<T>, step_blocks(cells), kStepThreads, 0, c10::cuda::getCurrentCUDAStream(),
           gates.data_ptr<float>(), c.data_ptr<float>(), c_prev.data_ptr<float>(), dh.data_ptr<float>(),
           dc.data_ptr<float>(), static_cast<T*>(d_pre.data_ptr()), cells, static_cast<int>(c.size(1)));
  });
}

}  // namespace

extern const ::lstm_attn::lstm::StepKernels kCudaSteps{&step_forward, &step_backward};

}  // namespace lstm_attn::gpu::lstm
