// The attention + residual + LayerNorm forward kernel and its per-bucket launcher (design: tiled.cuh).
#pragma once

#include <type_traits>

#include "cuda/attention/layernorm_row.cuh"
#include "cuda/attention/tiled/tiled.cuh"
#include "cuda/mma.cuh"

namespace lstm_attn::gpu {

template <class Mma, int HB, class Tl>
struct FwdSmem {
  using In = typename Mma::Elem;
  static constexpr int BM = Tl::BM, BN = Tl::BN;
  // Float P is written over the scores it is computed from (same element, same thread); 16-bit P needs its own tile.
  static constexpr bool kPOverS = std::is_same<In, float>::value;
  static constexpr int kLdH = HB + Mma::kPad, kLdS = BN + 4, kLdP = kPOverS ? kLdS : BN + Mma::kPad, kLdO = HB + 4;
  static constexpr size_t kStats = 0;  // row max, row sum, rescale factor: 3 x BM floats
  static constexpr size_t kQ = align128(3 * BM * sizeof(float));
  static constexpr size_t kK = kQ + align128(BM * kLdH * sizeof(In));
  static constexpr size_t kV = kK + align128(BN * kLdH * sizeof(In));
  static constexpr size_t kS = kV + align128(BN * kLdH * sizeof(In));
  static constexpr size_t kP = kPOverS ? kS : kS + align128(BM * kLdS * sizeof(float));
  static constexpr size_t kEnd = kP + align128(BM * kLdP * sizeof(In));
  static constexpr size_t kO = kQ;  // the epilogue's O tile reuses the Q/K/V space
  static constexpr size_t kBytes = kEnd > kO + BM* kLdO * sizeof(float) ? kEnd : kO + BM* kLdO * sizeof(float);
  static_assert(BM * kLdS >= 256, "the score tile doubles as row_map's scratch");
  static_assert(kBytes <= kMaxSmemBytes, "shared memory beyond what an A100 block may use");
};

template <class Mma, class T, int HB, class Tl>
__global__ void __launch_bounds__(Tl::kThreads, kMinBlocksPerSm) attention_layernorm_fwd_kernel(const AttnFwdParams p) {
  using In = typename Mma::Elem;
  static_assert(std::is_same<In, T>::value, "operands are staged in the input dtype");
  using L = FwdSmem<Mma, HB, Tl>;
  constexpr int BM = Tl::BM, BN = Tl::BN, kThreads = Tl::kThreads;
  constexpr int kRowThreads = kThreads / BM;  // threads sharing one row in the softmax phase
  static_assert(kThreads % BM == 0 && kRowThreads <= 32 && (kRowThreads & (kRowThreads - 1)) == 0,
                "softmax rows must map to aligned lane groups");

  extern __shared__ __align__(128) unsigned char smem[];
  float* s_max = reinterpret_cast<float*>(smem + L::kStats);
  float* s_sum = s_max + BM;
  float* s_alpha = s_sum + BM;
  In* s_q = reinterpret_cast<In*>(smem + L::kQ);
  In* s_k = reinterpret_cast<In*>(smem + L::kK);
  In* s_v = reinterpret_cast<In*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  In* s_p = reinterpret_cast<In*>(smem + L::kP);
  float* s_o = reinterpret_cast<float*>(smem + L::kO);

  const int H = p.H, q_tiles = ceil_div(p.Tq, BM);
  const int b = blockIdx.x / q_tiles, q0 = blockIdx.x % q_tiles * BM;
  const int q_rows = min(BM, p.Tq - q0);
  const int64_t row0 = static_cast<int64_t>(b) * p.Tq + q0;  // first global (b, t) row of this tile
  const T* k = static_cast<const T*>(p.k) + static_cast<int64_t>(b) * p.Tk * H;
  const T* v = static_cast<const T*>(p.v) + static_cast<int64_t>(b) * p.Tk * H;

  load_tile<BM, HB, L::kLdH, kThreads>(s_q, static_cast<const T*>(p.q) + row0 * H, q_rows, H, p.vec);
  const auto row_map = Mma::row_map(s_s);  // s_s is free until the first key tile

  typename Mma::template Acc<BM, HB> o;
  Mma::zero(o);
  const int row = threadIdx.x / kRowThreads, sub = threadIdx.x % kRowThreads;
  float row_max = -INFINITY, row_sum = 0.f;  // of scores in log2 units: s * scale * log2(e)
  const float scale_log2 = p.scale * kLog2e;

  for (int k0 = 0; k0 < p.Tk; k0 += BN) {
    const int k_rows = min(BN, p.Tk - k0);
    __syncthreads();  // the previous tile's P V product is done with s_k, s_v, s_p
    load_tile<BN, HB, L::kLdH, kThreads>(s_k, k + static_cast<int64_t>(k0) * H, k_rows, H, p.vec);
    load_tile<BN, HB, L::kLdH, kThreads>(s_v, v + static_cast<int64_t>(k0) * H, k_rows, H, p.vec);
    __syncthreads();
    {
      typename Mma::template Acc<BM, BN> s;
      Mma::zero(s);
      Mma::template gemm<HB, RowMajor, ColMajor>(s, s_q, L::kLdH, s_k, L::kLdH);
      Mma::store(s, s_s, L::kLdS);
    }
    __syncthreads();
    // Online softmax of this tile's scores; each thread reads and writes only its own columns of its row.
    float tile_max = -INFINITY;
    for (int j = sub; j < k_rows; j += kRowThreads) tile_max = fmaxf(tile_max, s_s[row * L::kLdS + j] * scale_log2);
    const float new_max = fmaxf(row_max, group_max(tile_max, kRowThreads));
    float tile_sum = 0.f;
    for (int j = sub; j < BN; j += kRowThreads) {
      const float pj = j < k_rows ? exp2f(s_s[row * L::kLdS + j] * scale_log2 - new_max) : 0.f;
      s_p[row * L::kLdP + j] = from_float<In>(pj);
      tile_sum += pj;
    }
    const float alpha = exp2f(row_max - new_max);  // 0 on the first tile, where row_max is -inf
    row_sum = row_sum * alpha + group_sum(tile_sum, kRowThreads);
    row_max = new_max;
    if (sub == 0) s_alpha[row] = alpha;
    __syncthreads();
    Mma::scale_rows(o, row_map, s_alpha);
    Mma::template gemm<BN, RowMajor, RowMajor>(o, s_p, L::kLdP, s_v, L::kLdH);
  }

  if (sub == 0) {
    s_max[row] = row_max;
    s_sum[row] = row_sum;
  }
  __syncthreads();  // every P V product is done before the O tile overwrites Q/K/V
  Mma::store(o, s_o, L::kLdO);
  __syncthreads();

  // Epilogue, a warp per row: attn = O / l; y = attn + residual; out = LayerNorm(y).
  constexpr int kWarps = kThreads / 32, kPerLane = HB / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* residual = static_cast<const T*>(p.residual);
  const T* weight = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* attn = static_cast<T*>(p.attn);
  T* out = static_cast<T*>(p.out);
  for (int r = warp; r < q_rows; r += kWarps) {
    const int64_t g = (row0 + r) * H;
    float mean, rstd;
    residual_layernorm_row<T, kPerLane>(s_o + r * L::kLdO, 1.f / s_sum[r], residual + g, weight, bias, attn + g,
                                        out + g, H, p.eps, mean, rstd);
    if (lane == 0) {
      p.lse[row0 + r] = (s_max[r] + log2f(s_sum[r])) * kLn2;
      p.mean[row0 + r] = mean;
      p.rstd[row0 + r] = rstd;
    }
  }
}

template <template <class, int> class MmaFor, class T, int HB>
void run_attention_fwd(const AttnFwdParams& p, cudaStream_t stream) {
  using Tl = typename Tiles<HB, sizeof(T)>::Fwd;
  using Mma = MmaFor<T, Tl::kThreads>;
  const int grid = p.B * ceil_div(p.Tq, Tl::BM);
  launch(attention_layernorm_fwd_kernel<Mma, T, HB, Tl>, grid, Tl::kThreads, FwdSmem<Mma, HB, Tl>::kBytes, stream, p);
}

template <int HB>
void attention_fwd_bucket(const AttnFwdParams& p, MmaPath path, cudaStream_t stream) {
  switch (path) {
    case MmaPath::kHalf:
      return run_attention_fwd<TensorCoreMma, __half, HB>(p, stream);
    case MmaPath::kBFloat16:
      return run_attention_fwd<TensorCoreMma, __nv_bfloat16, HB>(p, stream);
    case MmaPath::kTf32:
      return run_attention_fwd<TensorCoreMma, float, HB>(p, stream);
    case MmaPath::kFloat:
      return run_attention_fwd<ExactMma, float, HB>(p, stream);
  }
}

}  // namespace lstm_attn::gpu
