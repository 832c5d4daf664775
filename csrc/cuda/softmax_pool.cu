// softmax_pool on CUDA: pooled = sum_j softmax_j(x_j . u + c) x_j over the time axis, and its backward.
//
// Memory-bound: each kernel reads x once (the backward also writes grad_x once). A block of 256 threads streams one
// batch row's time range. A group of G lanes (G a power of two <= 32) owns one time row at a time: lane `sub` holds
// columns (c * G + sub) * kVec + [0, kVec) for c < kChunks, loaded as 16-byte vectors where rows are 16-byte aligned.
// Each group loads kRows rows before reducing (memory-level parallelism) and keeps its running state in registers:
// online-softmax max, sum and H-vector accumulator forward; grad_u and grad_c sums backward. The block's groups are
// then combined in group order through shared memory. Where B is small and T long, T is split over several blocks
// per batch row and a second kernel combines the splits in split order, so every sum has a fixed order and results
// are deterministic.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "cuda/common.cuh"
#include "kernel_limits.h"

namespace lstm_attn::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPerLane = kMaxHeadDim / 32;  // columns per lane at G = 32
constexpr int kMinSplitRows = 512;             // a split streams at least this many rows
constexpr int kTargetBlocks = 1024;            // enough blocks to fill any current GPU several times over

struct PoolFwdParams {
  const void *x, *u, *c;
  void* pooled;
  float* lse;
  float* partials;  // (B * splits, 2 + H): max, sum, accumulator of each split (splits > 1 only)
  int T, H, splits, chunk, group;
};

struct PoolBwdParams {
  const void *grad_pooled, *x, *u, *c, *pooled;
  const float* lse;
  void *grad_x, *grad_u, *grad_c;
  float* partials;  // (B * splits, 2 + 2H): grad_c, sum p, grad_u, sum p x of each split (splits > 1 only)
  int T, H, splits, chunk, group;
};

// How a batch row's time range is split over blocks and H over a lane group (chunk rows per split).
struct PoolLayout {
  int splits, chunk, group, chunks;
};

PoolLayout pool_layout(int64_t B, int64_t T, int H, int vec) {
  const int64_t want =
      std::min<int64_t>((T + kMinSplitRows - 1) / kMinSplitRows, std::max<int64_t>(1, kTargetBlocks / B));
  PoolLayout l{};
  l.chunk = static_cast<int>((T + want - 1) / want);
  l.splits = static_cast<int>((T + l.chunk - 1) / l.chunk);  // every split non-empty
  const int vectors = ceil_div(H, vec);
  l.group = 1;
  while (l.group < vectors && l.group < 32) l.group *= 2;
  l.chunks = ceil_div(vectors, l.group);
  return l;
}

template <class T, int kVec>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[kVec]) {
  if constexpr (kVec == 1) {
    dst[0] = to_float(*src);
  } else {
    static_assert(kVec * sizeof(T) == 16, "vectors are 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = to_float(e[i]);
  }
}

template <class T, int kVec>
__device__ __forceinline__ void store_vec(T* dst, const float (&src)[kVec]) {
  if constexpr (kVec == 1) {
    *dst = from_float<T>(src[0]);
  } else {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = from_float<T>(src[i]);
    *reinterpret_cast<uint4*>(dst) = raw;
  }
}

// Loads a (b, H) row's slice owned by this lane; zeros past H.
template <class T, int kVec, int kChunks>
__device__ __forceinline__ void load_row_slice(const T* row, int H, int group, int sub, float (&dst)[kChunks][kVec]) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int h = (c * group + sub) * kVec + i;
      dst[c][i] = h < H ? to_float(row[h]) : 0.f;
    }
}

// A step of kRows rows is small enough to keep in registers: at most 16 floats of x per lane, and at most 4 rows.
template <int kVec, int kChunks>
constexpr int rows_per_step() {
  return kVec * kChunks >= 16 ? 1 : 16 / (kVec * kChunks) < 4 ? 16 / (kVec * kChunks) : 4;
}

// Rows [t, t + kRows) of x into registers, zeros for rows past t_end and columns past H.
template <class T, int kVec, int kChunks, int kRows>
__device__ __forceinline__ void load_rows(const T* x, int t, int t_end, int H, int group, int sub,
                                          float (&xs)[kRows][kChunks][kVec]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int h = (c * group + sub) * kVec;
      if (t + r < t_end && h < H) {
        load_vec<T, kVec>(x + static_cast<int64_t>(t + r) * H + h, xs[r][c]);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) xs[r][c][i] = 0.f;
      }
    }
}

template <int kVec, int kChunks>
__device__ __forceinline__ float dot(const float (&a)[kChunks][kVec], const float (&b)[kChunks][kVec]) {
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int i = 0; i < kVec; ++i) s = fmaf(a[c][i], b[c][i], s);
  return s;
}

template <class T, int kVec, int kChunks>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) softmax_pool_fwd_kernel(const PoolFwdParams p) {
  constexpr int kRows = rows_per_step<kVec, kChunks>();
  extern __shared__ float smem[];  // per group: max, sum, then (groups, H) accumulators
  const int G = p.group, groups = kThreads / G, gi = threadIdx.x / G, sub = threadIdx.x % G;
  const int H = p.H, b = blockIdx.x / p.splits, split = blockIdx.x % p.splits;
  const int t_begin = split * p.chunk, t_end = min(p.T, t_begin + p.chunk);
  const T* x = static_cast<const T*>(p.x) + static_cast<int64_t>(b) * p.T * H;
  const float c = to_float(static_cast<const T*>(p.c)[b]);

  float u[kChunks][kVec], acc[kChunks][kVec];
  load_row_slice<T, kVec, kChunks>(static_cast<const T*>(p.u) + static_cast<int64_t>(b) * H, H, G, sub, u);
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[k][i] = 0.f;
  float run_max = -INFINITY, run_sum = 0.f;  // of scores in log2 units

  // Every lane runs every step (shuffles need the whole warp); rows past t_end score -inf and weigh 0.
  for (int t = t_begin + gi * kRows; t - gi * kRows < t_end; t += groups * kRows) {
    float xs[kRows][kChunks][kVec], s[kRows];
    load_rows<T, kVec, kChunks, kRows>(x, t, t_end, H, G, sub, xs);
    float step_max = -INFINITY;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      s[r] = group_sum(dot(xs[r], u), G);
      s[r] = t + r < t_end ? (s[r] + c) * kLog2e : -INFINITY;
      step_max = fmaxf(step_max, s[r]);
    }
    const float new_max = fmaxf(run_max, step_max);
    // Guards keep -inf - -inf (a group with no rows yet) from making NaN; a NaN score still propagates.
    const float alpha = run_max == -INFINITY ? 0.f : exp2f(run_max - new_max);
    run_sum *= alpha;
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[k][i] *= alpha;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float pr = s[r] == -INFINITY ? 0.f : exp2f(s[r] - new_max);
      run_sum += pr;
#pragma unroll
      for (int k = 0; k < kChunks; ++k)
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[k][i] = fmaf(pr, xs[r][k][i], acc[k][i]);
    }
    run_max = new_max;
  }

  float* s_max = smem;
  float* s_sum = s_max + groups;
  float* s_acc = s_sum + groups;
  if (sub == 0) {
    s_max[gi] = run_max;
    s_sum[gi] = run_sum;
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int h = (k * G + sub) * kVec + i;
      if (h < H) s_acc[gi * H + h] = acc[k][i];
    }
  __syncthreads();
  float m = -INFINITY;
  for (int g = 0; g < groups; ++g) m = fmaxf(m, s_max[g]);
  float l = 0.f;
  for (int g = 0; g < groups; ++g) l += s_max[g] == -INFINITY ? 0.f : s_sum[g] * exp2f(s_max[g] - m);
  // With one split this block finishes the row; otherwise it leaves (max, sum, accumulator) for the combine kernel.
  const bool whole_row = p.splits == 1;
  T* pooled = static_cast<T*>(p.pooled) + static_cast<int64_t>(b) * H;
  float* partial = whole_row ? nullptr : p.partials + static_cast<int64_t>(blockIdx.x) * (2 + H);
  for (int h = threadIdx.x; h < H; h += kThreads) {
    float a = 0.f;
    for (int g = 0; g < groups; ++g) a += s_max[g] == -INFINITY ? 0.f : s_acc[g * H + h] * exp2f(s_max[g] - m);
    if (whole_row) {
      pooled[h] = from_float<T>(a / l);
    } else {
      partial[2 + h] = a;
    }
  }
  if (threadIdx.x == 0) {
    if (whole_row) {
      p.lse[b] = (m + log2f(l)) * kLn2;
    } else {
      partial[0] = m;
      partial[1] = l;
    }
  }
}

// Block b combines batch row b's splits in split order.
template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) softmax_pool_fwd_combine_kernel(const PoolFwdParams p) {
  const int b = blockIdx.x, H = p.H, S = p.splits;
  const float* partial = p.partials + static_cast<int64_t>(b) * S * (2 + H);
  float m = -INFINITY;
  for (int s = 0; s < S; ++s) m = fmaxf(m, partial[s * (2 + H)]);
  float l = 0.f;
  for (int s = 0; s < S; ++s) l += partial[s * (2 + H) + 1] * exp2f(partial[s * (2 + H)] - m);
  for (int h = threadIdx.x; h < H; h += kThreads) {
    float a = 0.f;
    for (int s = 0; s < S; ++s) a += partial[s * (2 + H) + 2 + h] * exp2f(partial[s * (2 + H)] - m);
    static_cast<T*>(p.pooled)[static_cast<int64_t>(b) * H + h] = from_float<T>(a / l);
  }
  if (threadIdx.x == 0) p.lse[b] = (m + log2f(l)) * kLn2;
}

// With delta' = delta + grad_c / p_sum the exact delta of the pass's own probabilities (grad_c having been summed
// with the saved delta), ds'_j = ds_j - (grad_c / p_sum) p_j: grad_u loses (grad_c / p_sum) sum_j p_j x_j and grad_c
// itself becomes grad_c - (grad_c / p_sum) p_sum, zero up to rounding as the exact gradient is.
__device__ __forceinline__ float corrected_grad_u(float grad_u, float px, float grad_c, float p_sum) {
  return grad_u - (grad_c / p_sum) * px;
}
__device__ __forceinline__ float corrected_grad_c(float grad_c, float p_sum) { return grad_c - (grad_c / p_sum) * p_sum; }

template <class T, int kVec, int kChunks>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) softmax_pool_bwd_kernel(const PoolBwdParams p) {
  constexpr int kRows = rows_per_step<kVec, kChunks>();
  extern __shared__ float smem[];  // per group: grad_c and sum p, then (groups, H) grad_u and sum p x
  const int G = p.group, groups = kThreads / G, gi = threadIdx.x / G, sub = threadIdx.x % G;
  const int H = p.H, b = blockIdx.x / p.splits, split = blockIdx.x % p.splits;
  const int t_begin = split * p.chunk, t_end = min(p.T, t_begin + p.chunk);
  const int64_t row_b = static_cast<int64_t>(b) * H;
  const T* x = static_cast<const T*>(p.x) + row_b * p.T;
  T* grad_x = static_cast<T*>(p.grad_x) + row_b * p.T;
  const float c = to_float(static_cast<const T*>(p.c)[b]);
  const float lse = p.lse[b];

  float u[kChunks][kVec], g[kChunks][kVec], grad_u[kChunks][kVec], px[kChunks][kVec];
  load_row_slice<T, kVec, kChunks>(static_cast<const T*>(p.u) + row_b, H, G, sub, u);
  load_row_slice<T, kVec, kChunks>(static_cast<const T*>(p.grad_pooled) + row_b, H, G, sub, g);
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) grad_u[k][i] = px[k][i] = 0.f;
  float delta;  // g . pooled; every group reduces the same values in the same order
  {
    float pooled[kChunks][kVec];
    load_row_slice<T, kVec, kChunks>(static_cast<const T*>(p.pooled) + row_b, H, G, sub, pooled);
    delta = group_sum(dot(g, pooled), G);
  }
  // The saved pooled is rounded to T, so g . pooled misses the exact delta = sum_j p_j (g . x_j) by that rounding;
  // grad_c and grad_u are corrected at the end from sum_j p_j and sum_j p_j x_j (finish_pool_grads). In 16-bit
  // dtypes the rounding would otherwise dominate grad_c, which is zero in exact arithmetic.
  float grad_c = 0.f, p_sum = 0.f;

  for (int t = t_begin + gi * kRows; t - gi * kRows < t_end; t += groups * kRows) {
    float xs[kRows][kChunks][kVec];
    load_rows<T, kVec, kChunks, kRows>(x, t, t_end, H, G, sub, xs);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float xu = group_sum(dot(xs[r], u), G), gx = group_sum(dot(xs[r], g), G);
      if (t + r >= t_end) continue;  // after the shuffles: every lane took part in them
      const float pr = exp2f((xu + c - lse) * kLog2e), ds = pr * (gx - delta);
      grad_c += ds;
      p_sum += pr;
#pragma unroll
      for (int k = 0; k < kChunks; ++k) {
        const int h = (k * G + sub) * kVec;
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          out[i] = fmaf(pr, g[k][i], ds * u[k][i]);
          grad_u[k][i] = fmaf(ds, xs[r][k][i], grad_u[k][i]);
          px[k][i] = fmaf(pr, xs[r][k][i], px[k][i]);
        }
        if (h < H) store_vec<T, kVec>(grad_x + static_cast<int64_t>(t + r) * H + h, out);
      }
    }
  }

  float* s_grad_c = smem;
  float* s_p_sum = s_grad_c + groups;
  float* s_grad_u = s_p_sum + groups;
  float* s_px = s_grad_u + static_cast<int64_t>(groups) * H;
  if (sub == 0) {
    s_grad_c[gi] = grad_c;
    s_p_sum[gi] = p_sum;
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k)
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int h = (k * G + sub) * kVec + i;
      if (h < H) {
        s_grad_u[gi * H + h] = grad_u[k][i];
        s_px[gi * H + h] = px[k][i];
      }
    }
  __syncthreads();
  // Sum over the groups in a fixed order: this block's totals, final if the block covers the whole row.
  const bool whole_row = p.splits == 1;
  float* partial = whole_row ? nullptr : p.partials + static_cast<int64_t>(blockIdx.x) * (2 + 2 * H);
  float totals[2] = {0.f, 0.f};
  for (int gr = 0; gr < groups; ++gr) {
    totals[0] += s_grad_c[gr];
    totals[1] += s_p_sum[gr];
  }
  for (int h = threadIdx.x; h < H; h += kThreads) {
    float a = 0.f, b_px = 0.f;
    for (int gr = 0; gr < groups; ++gr) {
      a += s_grad_u[gr * H + h];
      b_px += s_px[gr * H + h];
    }
    if (whole_row) {
      static_cast<T*>(p.grad_u)[row_b + h] = from_float<T>(corrected_grad_u(a, b_px, totals[0], totals[1]));
    } else {
      partial[2 + h] = a;
      partial[2 + H + h] = b_px;
    }
  }
  if (threadIdx.x == 0) {
    if (whole_row) {
      static_cast<T*>(p.grad_c)[b] = from_float<T>(corrected_grad_c(totals[0], totals[1]));
    } else {
      partial[0] = totals[0];
      partial[1] = totals[1];
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) softmax_pool_bwd_combine_kernel(const PoolBwdParams p) {
  const int b = blockIdx.x, H = p.H, S = p.splits;
  const int64_t stride = 2 + 2 * H;
  const float* partial = p.partials + static_cast<int64_t>(b) * S * stride;
  float grad_c = 0.f, p_sum = 0.f;
  for (int s = 0; s < S; ++s) {
    grad_c += partial[s * stride];
    p_sum += partial[s * stride + 1];
  }
  for (int h = threadIdx.x; h < H; h += kThreads) {
    float a = 0.f, b_px = 0.f;
    for (int s = 0; s < S; ++s) {
      a += partial[s * stride + 2 + h];
      b_px += partial[s * stride + 2 + H + h];
    }
    static_cast<T*>(p.grad_u)[static_cast<int64_t>(b) * H + h] = from_float<T>(corrected_grad_u(a, b_px, grad_c, p_sum));
  }
  if (threadIdx.x == 0) static_cast<T*>(p.grad_c)[b] = from_float<T>(corrected_grad_c(grad_c, p_sum));
}

// Calls f(std::integral_constant<int, kVec>, std::integral_constant<int, kChunks>) for the instantiation that
// covers this layout: one chunk per lane, or as many as H = 512 needs.
template <class T, class F>
void dispatch_layout(bool vec, int chunks, F&& f) {
  constexpr int kVecWide = 16 / sizeof(T);
  if (vec) {
    if (chunks == 1) return f(std::integral_constant<int, kVecWide>{}, std::integral_constant<int, 1>{});
    return f(std::integral_constant<int, kVecWide>{}, std::integral_constant<int, kMaxPerLane / kVecWide>{});
  }
  if (chunks == 1) return f(std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
  return f(std::integral_constant<int, 1>{}, std::integral_constant<int, kMaxPerLane>{});
}

void check_cuda_limits(const at::Tensor& x) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "lstm_attn's CUDA kernels support float32, bfloat16 and float16; x has dtype ", dtype,
              dtype == at::kDouble ? " (float64 runs on the 'cpu' and 'reference' backends)" : "");
  TORCH_CHECK(x.size(2) <= kMaxHeadDim, "lstm_attn's CUDA kernels support H up to ", kMaxHeadDim,
              ", got H = ", x.size(2));
  // Row indices are int with a step's worth of headroom; the grid holds at most max(B, kTargetBlocks) blocks.
  TORCH_CHECK(x.size(1) <= INT_MAX - 4096 && x.size(0) <= INT_MAX, "lstm_attn's CUDA kernels: x ", x.sizes(),
              " is too large for one launch");
}

std::tuple<at::Tensor, at::Tensor> softmax_pool_fwd_cuda(const at::Tensor& x_in, const at::Tensor& u_in,
                                                         const at::Tensor& c_in) {
  check_softmax_pool_inputs(x_in, u_in, c_in);
  check_cuda_limits(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), u = u_in.contiguous(), c = c_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1);
  const int H = static_cast<int>(x.size(2));
  at::Tensor pooled = at::empty({B, H}, x.options());
  at::Tensor lse = at::empty({B}, x.options().dtype(at::kFloat));
  if (B == 0) return {pooled, lse};

  const bool vec = rows_16b_aligned(H, x.element_size(), {x.data_ptr()});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using Scalar = decltype(tag);
    const int vec_elems = vec ? 16 / sizeof(Scalar) : 1;
    const PoolLayout l = pool_layout(B, T, H, vec_elems);
    at::Tensor partials;
    if (l.splits > 1) partials = at::empty({B * l.splits, 2 + H}, x.options().dtype(at::kFloat));
    PoolFwdParams p{x.data_ptr(),
                    u.data_ptr(),
                    c.data_ptr(),
                    pooled.data_ptr(),
                    lse.data_ptr<float>(),
                    l.splits > 1 ? partials.data_ptr<float>() : nullptr,
                    static_cast<int>(T),
                    H,
                    l.splits,
                    l.chunk,
                    l.group};
    const int groups = kThreads / l.group;
    const size_t smem = (2 * groups + static_cast<size_t>(groups) * H) * sizeof(float);
    dispatch_layout<Scalar>(vec, l.chunks, [&](auto vec_c, auto chunks_c) {
      launch(softmax_pool_fwd_kernel<Scalar, decltype(vec_c)::value, decltype(chunks_c)::value>,
             static_cast<int>(B * l.splits), kThreads, smem, stream, p);
    });
    if (l.splits > 1) launch(softmax_pool_fwd_combine_kernel<Scalar>, static_cast<int>(B), kThreads, 0, stream, p);
  });
  return {pooled, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_pool_bwd_cuda(const at::Tensor& grad_pooled_in,
                                                                     const at::Tensor& x_in, const at::Tensor& u_in,
                                                                     const at::Tensor& c_in,
                                                                     const at::Tensor& pooled_in,
                                                                     const at::Tensor& lse_in) {
  check_softmax_pool_inputs(x_in, u_in, c_in);
  TORCH_CHECK(grad_pooled_in.sizes() == u_in.sizes(), "grad_pooled has shape ", grad_pooled_in.sizes(),
              "; expected (B, H) = ", u_in.sizes());
  check_same(grad_pooled_in, "grad_pooled", x_in, "x");
  TORCH_CHECK(pooled_in.sizes() == u_in.sizes(), "pooled has shape ", pooled_in.sizes(),
              "; expected (B, H) = ", u_in.sizes());
  check_same(pooled_in, "pooled", x_in, "x");
  TORCH_CHECK(lse_in.scalar_type() == at::kFloat && lse_in.dim() == 1 && lse_in.size(0) == x_in.size(0),
              "lse must be float32 of shape (B,) = (", x_in.size(0), ",), got ", lse_in.scalar_type(), " ",
              lse_in.sizes());
  TORCH_CHECK(lse_in.device() == x_in.device(), "lse is on ", lse_in.device(), " but x is on ", x_in.device());
  check_cuda_limits(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_pooled = grad_pooled_in.contiguous(), x = x_in.contiguous(), u = u_in.contiguous();
  const at::Tensor c = c_in.contiguous(), pooled = pooled_in.contiguous(), lse = lse_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1);
  const int H = static_cast<int>(x.size(2));
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_u = at::empty(u.sizes(), u.options());
  at::Tensor grad_c = at::empty(c.sizes(), c.options());
  if (B == 0) return {grad_x, grad_u, grad_c};

  const bool vec = rows_16b_aligned(H, x.element_size(), {x.data_ptr(), grad_x.data_ptr()});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using Scalar = decltype(tag);
    const int vec_elems = vec ? 16 / sizeof(Scalar) : 1;
    const PoolLayout l = pool_layout(B, T, H, vec_elems);
    at::Tensor partials;
    if (l.splits > 1) partials = at::empty({B * l.splits, 2 + 2 * H}, x.options().dtype(at::kFloat));
    PoolBwdParams p{grad_pooled.data_ptr(),
                    x.data_ptr(),
                    u.data_ptr(),
                    c.data_ptr(),
                    pooled.data_ptr(),
                    lse.data_ptr<float>(),
                    grad_x.data_ptr(),
                    grad_u.data_ptr(),
                    grad_c.data_ptr(),
                    l.splits > 1 ? partials.data_ptr<float>() : nullptr,
                    static_cast<int>(T),
                    H,
                    l.splits,
                    l.chunk,
                    l.group};
    const int groups = kThreads / l.group;
    const size_t smem = (2 * groups + 2 * static_cast<size_t>(groups) * H) * sizeof(float);
    dispatch_layout<Scalar>(vec, l.chunks, [&](auto vec_c, auto chunks_c) {
      launch(softmax_pool_bwd_kernel<Scalar, decltype(vec_c)::value, decltype(chunks_c)::value>,
             static_cast<int>(B * l.splits), kThreads, smem, stream, p);
    });
    if (l.splits > 1) launch(softmax_pool_bwd_combine_kernel<Scalar>, static_cast<int>(B), kThreads, 0, stream, p);
  });
  return {grad_x, grad_u, grad_c};
}

}  // namespace
}  // namespace lstm_attn::gpu

TORCH_LIBRARY_IMPL(lstm_attn, CUDA, m) {
  m.impl("softmax_pool_fwd", &lstm_attn::gpu::softmax_pool_fwd_cuda);
  m.impl("softmax_pool_bwd", &lstm_attn::gpu::softmax_pool_bwd_cuda);
}
