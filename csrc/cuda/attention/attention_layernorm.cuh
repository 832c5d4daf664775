// CUDA attention + residual + LayerNorm: the parameters the kernel plans take (lstm_attn/plans.py chooses the plan),
// and the LayerNorm backward that every plan's backward starts with. Host-only declarations, so that host code
// (gemm/steps.cpp) can include it.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace lstm_attn::gpu {

struct AttnFwdParams {
  const void *q, *k, *v, *residual, *weight, *bias;
  void *out, *attn;
  float *lse, *mean, *rstd;
  int B, Tq, Tk, H;
  float scale, eps;
  bool vec;  // q, k, v rows may be read with 16-byte vector loads
};

struct AttnBwdParams {
  const void *q, *k, *v, *grad_attn;  // grad_attn: dO, the LayerNorm backward's output
  const float *lse, *delta;
  void *grad_q, *grad_k, *grad_v;
  float* dq_accum;  // flash plan: (B, Tq, H) float32, zeroed; the key blocks' dQ shares are added into it in order
  int* dq_order;    // flash plan: flash::dq_order_ints ints, zeroed: the block ticket and the counters of that order
  int B, Tq, Tk, H;
  float scale;
  bool vec;  // q, k, v, grad_attn rows may be read with 16-byte vector loads
};

struct LayerNormBwdParams {
  const void *grad_out, *attn, *residual, *weight;
  const float *mean, *rstd;
  void* grad_residual;
  float* delta;
  float* partials;  // (blocks, 2, H): per-block sums of grad_out * xhat and of grad_out
  int64_t rows;
  int H;
};

// layernorm_bwd.cu. The number of (2, H) partial rows layernorm_bwd writes for `rows` rows.
int64_t layernorm_bwd_blocks(int64_t rows);
void layernorm_bwd(const LayerNormBwdParams& p, c10::ScalarType dtype, cudaStream_t stream);
// grad_weight / grad_bias (H,) = the partial rows summed in block order.
void layernorm_bwd_reduce(const float* partials, int64_t blocks, int H, void* grad_weight, void* grad_bias,
                          c10::ScalarType dtype, cudaStream_t stream);

}  // namespace lstm_attn::gpu
