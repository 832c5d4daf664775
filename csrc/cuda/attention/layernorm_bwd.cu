// The first stage of attention_layernorm's backward: LayerNorm backward per row, the attention backward's delta, and
// grad_weight / grad_bias. A warp per row (H <= 512: at most 16 columns per lane, held in registers):
//   xhat = (attn + residual - mean) * rstd,  g = grad_out * weight
//   dy = rstd * (g - mean_H(g) - xhat * mean_H(g * xhat))  -> grad_residual, which is also the attention's dO
//   delta = sum_h attn * dO, with dO as stored (the operand the attention backward multiplies)
// grad_weight = sum_rows grad_out * xhat and grad_bias = sum_rows grad_out are summed per lane over a block's rows,
// then over the block's warps in warp order into a (blocks, 2, H) float buffer, and finally over blocks in block
// order: no atomics, the same sums in the same order on every run. kPerLane (columns per lane, H <= 32 * kPerLane) is
// a template parameter so that small H does not pay registers for H = 512.
#include "cuda/attention/attention_layernorm.cuh"
#include "cuda/common.cuh"

namespace lstm_attn::gpu {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kRowsPerBlock = 4 * kWarps;
constexpr int kReduceGroups = 8;  // the reduce kernel's rows of 32 columns each

template <class T, int kPerLane>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) layernorm_bwd_kernel(const LayerNormBwdParams p) {
  extern __shared__ float s_partial[];  // (kWarps, 2, H)
  const int H = p.H, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float inv_h = 1.f / H;
  const T* weight = static_cast<const T*>(p.weight);
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const T* attn = static_cast<const T*>(p.attn);
  const T* residual = static_cast<const T*>(p.residual);
  T* grad_residual = static_cast<T*>(p.grad_residual);

  float w[kPerLane], grad_w[kPerLane], grad_b[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int h = lane + 32 * i;
    w[i] = h < H ? to_float(weight[h]) : 0.f;
    grad_w[i] = grad_b[i] = 0.f;
  }

  for (int i = 0; i < kRowsPerBlock / kWarps; ++i) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + i * kWarps + warp;
    if (row >= p.rows) break;  // warp-uniform
    const int64_t g0 = row * H;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float a[kPerLane], go[kPerLane], gw[kPerLane], xhat[kPerLane];
    float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int h = lane + 32 * e;
      a[e] = go[e] = gw[e] = xhat[e] = 0.f;
      if (h < H) {
        a[e] = to_float(attn[g0 + h]);
        go[e] = to_float(grad_out[g0 + h]);
        // One rounded product, used in the mean and in dy alike: were dy's go * w fused into an FMA with
        // - mean_g, g - mean(g) would not cancel exactly at H = 1, where rstd = eps^-1/2 magnifies any residue.
        gw[e] = __fmul_rn(go[e], w[e]);
        xhat[e] = (a[e] + to_float(residual[g0 + h]) - mean) * rstd;
        sum_g += gw[e];
        sum_gx += gw[e] * xhat[e];
      }
    }
    const float mean_g = group_sum(sum_g, 32) * inv_h, mean_gx = group_sum(sum_gx, 32) * inv_h;
    float delta = 0.f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int h = lane + 32 * e;
      if (h < H) {
        const T dy = from_float<T>(rstd * (gw[e] - mean_g - xhat[e] * mean_gx));
        grad_residual[g0 + h] = dy;
        delta += a[e] * to_float(dy);
        grad_w[e] += go[e] * xhat[e];
        grad_b[e] += go[e];
      }
    }
    delta = group_sum(delta, 32);
    if (lane == 0) p.delta[row] = delta;
  }

#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int h = lane + 32 * e;
    if (h < H) {
      s_partial[(2 * warp) * H + h] = grad_w[e];
      s_partial[(2 * warp + 1) * H + h] = grad_b[e];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < 2 * H; c += kThreads) {
    float sum = 0.f;
    for (int v = 0; v < kWarps; ++v) sum += s_partial[2 * v * H + c];
    p.partials[static_cast<int64_t>(blockIdx.x) * 2 * H + c] = sum;
  }
}

// Block x owns columns [32x, 32x + 32); its kReduceGroups warps sum interleaved partial rows, then warp 0 adds the
// groups in order.
template <class T>
__global__ void __launch_bounds__(32 * kReduceGroups, kMinBlocksPerSm)
    layernorm_bwd_reduce_kernel(const float* partials, int64_t blocks, int H, T* grad_weight, T* grad_bias) {
  __shared__ float s_sum[kReduceGroups][2][32];
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32, h = blockIdx.x * 32 + lane;
  float w = 0.f, b = 0.f;
  if (h < H) {
    for (int64_t i = group; i < blocks; i += kReduceGroups) {
      w += partials[i * 2 * H + h];
      b += partials[i * 2 * H + H + h];
    }
  }
  s_sum[group][0][lane] = w;
  s_sum[group][1][lane] = b;
  __syncthreads();
  if (group == 0 && h < H) {
    w = b = 0.f;
    for (int v = 0; v < kReduceGroups; ++v) {
      w += s_sum[v][0][lane];
      b += s_sum[v][1][lane];
    }
    grad_weight[h] = from_float<T>(w);
    grad_bias[h] = from_float<T>(b);
  }
}

}  // namespace

int64_t layernorm_bwd_blocks(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

void layernorm_bwd(const LayerNormBwdParams& p, c10::ScalarType dtype, cudaStream_t stream) {
  const int64_t blocks = layernorm_bwd_blocks(p.rows);
  TORCH_CHECK(blocks <= INT32_MAX, "lstm_attn: too many rows for one launch: ", p.rows);
  const size_t smem = 2 * kWarps * p.H * sizeof(float);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.H <= 32) return launch(layernorm_bwd_kernel<T, 1>, static_cast<int>(blocks), kThreads, smem, stream, p);
    if (p.H <= 64) return launch(layernorm_bwd_kernel<T, 2>, static_cast<int>(blocks), kThreads, smem, stream, p);
    if (p.H <= 128) return launch(layernorm_bwd_kernel<T, 4>, static_cast<int>(blocks), kThreads, smem, stream, p);
    if (p.H <= 256) return launch(layernorm_bwd_kernel<T, 8>, static_cast<int>(blocks), kThreads, smem, stream, p);
    launch(layernorm_bwd_kernel<T, 16>, static_cast<int>(blocks), kThreads, smem, stream, p);
  });
}

void layernorm_bwd_reduce(const float* partials, int64_t blocks, int H, void* grad_weight, void* grad_bias,
                          c10::ScalarType dtype, cudaStream_t stream) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(layernorm_bwd_reduce_kernel<T>, ceil_div(H, 32), 32 * kReduceGroups, 0, stream, partials, blocks, H,
           static_cast<T*>(grad_weight), static_cast<T*>(grad_bias));
  });
}

}  // namespace lstm_attn::gpu
