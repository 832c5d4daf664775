// The attention backward kernels, dK/dV and dQ, and their per-bucket launcher (design: tiled.cuh).
// Both recompute P = exp(S * scale - lse) from the saved log-sum-exp and take dS = P (dP - delta) with the delta that
// layernorm_bwd computed; the LayerNorm backward has already turned grad_out into dO.
#pragma once

#include <type_traits>

#include "cuda/attention/tiled/tiled.cuh"
#include "cuda/mma.cuh"

namespace lstm_attn::gpu {

// The shared-memory layout of both backward kernels: row statistics, two tiles of BM query rows (Q, dO), two of BN
// key rows (K, V), the float score tiles S and dP, and their operand-dtype copies dS and (dK/dV only) P; float
// paths write those over dP and S (same element, same thread). The epilogue stages one float accumulator at a time
// (dK, dV: BN rows; dQ: BM rows) over the operand tiles.
template <class Mma, int HB, class Tl, bool kDkDv>
struct BwdSmem {
  using In = typename Mma::Elem;
  static constexpr int BM = Tl::BM, BN = Tl::BN;
  static constexpr bool kInPlace = std::is_same<In, float>::value;
  static constexpr int kLdH = HB + Mma::kPad, kLdS = BN + 4, kLdP = kInPlace ? kLdS : BN + Mma::kPad, kLdO = HB + 4;
  static constexpr size_t kScoreBytes = align128(BM * kLdS * sizeof(float)),
                          kOperandBytes = align128(BM * kLdP * sizeof(In));
  static constexpr size_t kLse = 0, kDelta = BM * sizeof(float);  // lse, delta: BM floats each
  static constexpr size_t kQ = align128(2 * BM * sizeof(float));
  static constexpr size_t kDo = kQ + align128(BM * kLdH * sizeof(In));
  static constexpr size_t kK = kDo + align128(BM * kLdH * sizeof(In));
  static constexpr size_t kV = kK + align128(BN * kLdH * sizeof(In));
  static constexpr size_t kS = kV + align128(BN * kLdH * sizeof(In));
  static constexpr size_t kDp = kS + kScoreBytes;
  static constexpr size_t kDs = kInPlace ? kDp : kDp + kScoreBytes;
  static constexpr size_t kP = kInPlace ? kS : kDs + kOperandBytes;  // used by dK/dV only
  static constexpr size_t kEnd = kInPlace ? kDp + kScoreBytes : kDs + kOperandBytes * (kDkDv ? 2 : 1);
  static constexpr size_t kStage = kQ, kStageEnd = kStage + (kDkDv ? BN : BM) * kLdO * sizeof(float);
  static constexpr size_t kBytes = kEnd > kStageEnd ? kEnd : kStageEnd;
  static_assert(kBytes <= kMaxSmemBytes, "shared memory beyond what an A100 block may use");
};

// S = Q K^T and dP = dO V^T into shared memory, then dS = P (dP - delta) and (kWriteP) P, with rows >= q_rows and
// columns >= k_rows set to 0. Starts after a barrier that made the tiles visible; ends with one that publishes them.
template <class Mma, int HB, class Tl, class Smem, bool kWriteP>
__device__ __forceinline__ void probabilities_and_grads(const typename Mma::Elem* s_q, const typename Mma::Elem* s_do,
                                                        const typename Mma::Elem* s_k, const typename Mma::Elem* s_v,
                                                        float* s_s, float* s_dp, typename Mma::Elem* s_p,
                                                        typename Mma::Elem* s_ds, const float* s_lse,
                                                        const float* s_delta, int q_rows, int k_rows, float scale) {
  using In = typename Mma::Elem;
  constexpr int BM = Tl::BM, BN = Tl::BN;
  {
    typename Mma::template Acc<BM, BN> s;
    Mma::zero(s);
    Mma::template gemm<HB, RowMajor, ColMajor>(s, s_q, Smem::kLdH, s_k, Smem::kLdH);
    Mma::store(s, s_s, Smem::kLdS);
  }
  {
    typename Mma::template Acc<BM, BN> dp;
    Mma::zero(dp);
    Mma::template gemm<HB, RowMajor, ColMajor>(dp, s_do, Smem::kLdH, s_v, Smem::kLdH);
    Mma::store(dp, s_dp, Smem::kLdS);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < BM * BN; e += Tl::kThreads) {
    const int r = e / BN, j = e % BN;
    float pr = 0.f, ds = 0.f;
    if (r < q_rows && j < k_rows) {
      pr = exp2f((s_s[r * Smem::kLdS + j] * scale - s_lse[r]) * kLog2e);
      ds = pr * (s_dp[r * Smem::kLdS + j] - s_delta[r]);
    }
    if constexpr (kWriteP) s_p[r * Smem::kLdP + j] = from_float<In>(pr);
    s_ds[r * Smem::kLdP + j] = from_float<In>(ds);
  }
  __syncthreads();
}

// lse and delta of query rows [q0, q0 + BM) into shared memory; 0 for rows past Tq.
template <int BM, int kThreads>
__device__ __forceinline__ void load_row_stats(float* s_lse, float* s_delta, const AttnBwdParams& p, int64_t row0,
                                               int q_rows) {
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    s_lse[r] = r < q_rows ? p.lse[row0 + r] : 0.f;
    s_delta[r] = r < q_rows ? p.delta[row0 + r] : 0.f;
  }
}

template <class Mma, class T, int HB, class Tl>
__global__ void __launch_bounds__(Tl::kThreads, kMinBlocksPerSm) attention_bwd_dkdv_kernel(const AttnBwdParams p) {
  using In = typename Mma::Elem;
  static_assert(std::is_same<In, T>::value, "operands are staged in the input dtype");
  using L = BwdSmem<Mma, HB, Tl, true>;
  constexpr int BM = Tl::BM, BN = Tl::BN, kThreads = Tl::kThreads;

  extern __shared__ __align__(128) unsigned char smem[];
  float* s_lse = reinterpret_cast<float*>(smem + L::kLse);
  float* s_delta = reinterpret_cast<float*>(smem + L::kDelta);
  In* s_q = reinterpret_cast<In*>(smem + L::kQ);
  In* s_do = reinterpret_cast<In*>(smem + L::kDo);
  In* s_k = reinterpret_cast<In*>(smem + L::kK);
  In* s_v = reinterpret_cast<In*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  float* s_dp = reinterpret_cast<float*>(smem + L::kDp);
  In* s_p = reinterpret_cast<In*>(smem + L::kP);
  In* s_ds = reinterpret_cast<In*>(smem + L::kDs);
  float* s_stage = reinterpret_cast<float*>(smem + L::kStage);

  const int H = p.H, k_tiles = ceil_div(p.Tk, BN);
  const int b = blockIdx.x / k_tiles, k0 = blockIdx.x % k_tiles * BN;
  const int k_rows = min(BN, p.Tk - k0);
  const int64_t k_row0 = static_cast<int64_t>(b) * p.Tk + k0, q_row0 = static_cast<int64_t>(b) * p.Tq;
  const T* q = static_cast<const T*>(p.q) + q_row0 * H;
  const T* d_o = static_cast<const T*>(p.grad_attn) + q_row0 * H;

  load_tile<BN, HB, L::kLdH, kThreads>(s_k, static_cast<const T*>(p.k) + k_row0 * H, k_rows, H, p.vec);
  load_tile<BN, HB, L::kLdH, kThreads>(s_v, static_cast<const T*>(p.v) + k_row0 * H, k_rows, H, p.vec);
  typename Mma::template Acc<BN, HB> dk, dv;
  Mma::zero(dk);
  Mma::zero(dv);

  for (int q0 = 0; q0 < p.Tq; q0 += BM) {
    const int q_rows = min(BM, p.Tq - q0);
    __syncthreads();  // the previous query tile's products are done with s_q, s_do, s_p, s_ds
    load_tile<BM, HB, L::kLdH, kThreads>(s_q, q + static_cast<int64_t>(q0) * H, q_rows, H, p.vec);
    load_tile<BM, HB, L::kLdH, kThreads>(s_do, d_o + static_cast<int64_t>(q0) * H, q_rows, H, p.vec);
    load_row_stats<BM, kThreads>(s_lse, s_delta, p, q_row0 + q0, q_rows);
    __syncthreads();
    probabilities_and_grads<Mma, HB, Tl, L, true>(s_q, s_do, s_k, s_v, s_s, s_dp, s_p, s_ds, s_lse, s_delta, q_rows,
                                                  k_rows, p.scale);
    Mma::template gemm<BM, ColMajor, RowMajor>(dv, s_p, L::kLdP, s_do, L::kLdH);  // dV += P^T dO
    Mma::template gemm<BM, ColMajor, RowMajor>(dk, s_ds, L::kLdP, s_q, L::kLdH);  // dK += dS^T Q
  }

  __syncthreads();  // all products are done before staging overwrites the tiles
  Mma::store(dk, s_stage, L::kLdO);
  __syncthreads();
  store_tile<BN, HB, kThreads>(static_cast<T*>(p.grad_k) + k_row0 * H, s_stage, L::kLdO, k_rows, H, p.scale);
  __syncthreads();
  Mma::store(dv, s_stage, L::kLdO);
  __syncthreads();
  store_tile<BN, HB, kThreads>(static_cast<T*>(p.grad_v) + k_row0 * H, s_stage, L::kLdO, k_rows, H, 1.f);
}

template <class Mma, class T, int HB, class Tl>
__global__ void __launch_bounds__(Tl::kThreads, kMinBlocksPerSm) attention_bwd_dq_kernel(const AttnBwdParams p) {
  using In = typename Mma::Elem;
  static_assert(std::is_same<In, T>::value, "operands are staged in the input dtype");
  using L = BwdSmem<Mma, HB, Tl, false>;
  constexpr int BM = Tl::BM, BN = Tl::BN, kThreads = Tl::kThreads;

  extern __shared__ __align__(128) unsigned char smem[];
  float* s_lse = reinterpret_cast<float*>(smem + L::kLse);
  float* s_delta = reinterpret_cast<float*>(smem + L::kDelta);
  In* s_q = reinterpret_cast<In*>(smem + L::kQ);
  In* s_do = reinterpret_cast<In*>(smem + L::kDo);
  In* s_k = reinterpret_cast<In*>(smem + L::kK);
  In* s_v = reinterpret_cast<In*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  float* s_dp = reinterpret_cast<float*>(smem + L::kDp);
  In* s_ds = reinterpret_cast<In*>(smem + L::kDs);
  float* s_stage = reinterpret_cast<float*>(smem + L::kStage);

  const int H = p.H, q_tiles = ceil_div(p.Tq, BM);
  const int b = blockIdx.x / q_tiles, q0 = blockIdx.x % q_tiles * BM;
  const int q_rows = min(BM, p.Tq - q0);
  const int64_t q_row0 = static_cast<int64_t>(b) * p.Tq + q0, k_row0 = static_cast<int64_t>(b) * p.Tk;
  const T* k = static_cast<const T*>(p.k) + k_row0 * H;
  const T* v = static_cast<const T*>(p.v) + k_row0 * H;

  load_tile<BM, HB, L::kLdH, kThreads>(s_q, static_cast<const T*>(p.q) + q_row0 * H, q_rows, H, p.vec);
  load_tile<BM, HB, L::kLdH, kThreads>(s_do, static_cast<const T*>(p.grad_attn) + q_row0 * H, q_rows, H, p.vec);
  load_row_stats<BM, kThreads>(s_lse, s_delta, p, q_row0, q_rows);
  typename Mma::template Acc<BM, HB> dq;
  Mma::zero(dq);

  for (int k0 = 0; k0 < p.Tk; k0 += BN) {
    const int k_rows = min(BN, p.Tk - k0);
    __syncthreads();  // the previous key tile's dS K product is done with s_k, s_ds
    load_tile<BN, HB, L::kLdH, kThreads>(s_k, k + static_cast<int64_t>(k0) * H, k_rows, H, p.vec);
    load_tile<BN, HB, L::kLdH, kThreads>(s_v, v + static_cast<int64_t>(k0) * H, k_rows, H, p.vec);
    __syncthreads();
    probabilities_and_grads<Mma, HB, Tl, L, false>(s_q, s_do, s_k, s_v, s_s, s_dp, nullptr, s_ds, s_lse, s_delta,
                                                   q_rows, k_rows, p.scale);
    Mma::template gemm<BN, RowMajor, RowMajor>(dq, s_ds, L::kLdP, s_k, L::kLdH);  // dQ += dS K
  }

  __syncthreads();  // all products are done before staging overwrites the tiles
  Mma::store(dq, s_stage, L::kLdO);
  __syncthreads();
  store_tile<BM, HB, kThreads>(static_cast<T*>(p.grad_q) + q_row0 * H, s_stage, L::kLdO, q_rows, H, p.scale);
}

template <template <class, int> class MmaFor, class T, int HB>
void run_attention_bwd(const AttnBwdParams& p, cudaStream_t stream) {
  using DkDv = typename Tiles<HB, sizeof(T)>::DkDv;
  using Dq = typename Tiles<HB, sizeof(T)>::Dq;
  using MmaKV = MmaFor<T, DkDv::kThreads>;
  using MmaQ = MmaFor<T, Dq::kThreads>;
  launch(attention_bwd_dkdv_kernel<MmaKV, T, HB, DkDv>, p.B * ceil_div(p.Tk, DkDv::BN), DkDv::kThreads,
         BwdSmem<MmaKV, HB, DkDv, true>::kBytes, stream, p);
  launch(attention_bwd_dq_kernel<MmaQ, T, HB, Dq>, p.B * ceil_div(p.Tq, Dq::BM), Dq::kThreads,
         BwdSmem<MmaQ, HB, Dq, false>::kBytes, stream, p);
}

template <int HB>
void attention_bwd_bucket(const AttnBwdParams& p, MmaPath path, cudaStream_t stream) {
  switch (path) {
    case MmaPath::kHalf:
      return run_attention_bwd<TensorCoreMma, __half, HB>(p, stream);
    case MmaPath::kBFloat16:
      return run_attention_bwd<TensorCoreMma, __nv_bfloat16, HB>(p, stream);
    case MmaPath::kTf32:
      return run_attention_bwd<TensorCoreMma, float, HB>(p, stream);
    case MmaPath::kFloat:
      return run_attention_bwd<ExactMma, float, HB>(p, stream);
  }
}

}  // namespace lstm_attn::gpu
