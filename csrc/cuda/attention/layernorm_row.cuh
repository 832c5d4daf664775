// The residual + LayerNorm of one row by one warp, shared by the plans whose forward ends with the attention output
// of a row in float (the tiled epilogue from shared memory, the gemm plan from the float32 product).
#pragma once

#include "cuda/common.cuh"

namespace lstm_attn::gpu {

// attn = o * o_scale rounded to T; y = attn + residual; out = (y - mean) * rstd * weight + bias over H <= 32 *
// kPerLane columns, lane l holding columns l + 32 i. Every lane of the warp calls it; mean and rstd come back in all.
template <class T, int kPerLane>
__device__ __forceinline__ void residual_layernorm_row(const float* o, float o_scale, const T* residual,
                                                       const T* weight, const T* bias, T* attn, T* out, int H,
                                                       float eps, float& mean, float& rstd) {
  const int lane = threadIdx.x % 32;
  float y[kPerLane];
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int h = lane + 32 * i;
    y[i] = 0.f;
    if (h < H) {
      const T a = from_float<T>(o[h] * o_scale);
      attn[h] = a;
      // y from attn as stored, with a plain add (never fused into an FMA with the product above), so the backward
      // rebuilds exactly this y: at H = 1, y - mean is rounding alone and rstd = eps^-1/2 magnifies it.
      y[i] = __fadd_rn(to_float(a), to_float(residual[h]));
      total += y[i];
    }
  }
  mean = group_sum(total, 32) / H;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < H) sq += (y[i] - mean) * (y[i] - mean);
  rstd = rsqrtf(group_sum(sq, 32) / H + eps);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int h = lane + 32 * i;
    if (h < H) out[h] = from_float<T>((y[i] - mean) * rstd * to_float(weight[h]) + to_float(bias[h]));
  }
}

}  // namespace lstm_attn::gpu
