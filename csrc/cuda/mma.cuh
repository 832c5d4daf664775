// Block-level matrix products over shared memory: C (M x N, float, held in registers across the block) += A (M x K)
// * B (K x N), both operands in shared memory. Two interchangeable policies give the attention and LSTM kernels
// one body for every dtype:
//   WmmaMma<In, kThreads>  tensor cores through nvcuda::wmma with float accumulators: m16n16k16 for __half and
//                          __nv_bfloat16, m16n16k8 tf32 for float (operands rounded to tf32 when loaded).
//   SimtMma<kThreads>      exact float32 FFMA, each thread a strided (kRows x kCols) micro-tile.
// A policy provides: Elem (the shared-memory operand type), kPad (row padding, in elements, of operand tiles),
// Acc<M, N>, zero, gemm<K, LayoutA, LayoutB>, scale_rows (multiply each accumulator row by a per-row factor),
// store (accumulator to a float matrix in shared memory), and row_map (what scale_rows needs to know).
//
// WMMA leaves the mapping of accumulator elements to lanes unspecified; scale_rows learns it at run time by loading a
// matrix whose entries are their own row index into an accumulator fragment (row_map), so nothing here depends on a
// particular architecture's fragment layout.
#pragma once

#include <mma.h>

#include <type_traits>

#include "cuda/common.cuh"

namespace lstm_attn::gpu {

// Where element (i, j) of an operand lives: RowMajor at i * ld + j, ColMajor at j * ld + i.
struct RowMajor {};
struct ColMajor {};

template <class Layout>
__device__ __forceinline__ int offset(int i, int j, int ld) {
  return std::is_same<Layout, RowMajor>::value ? i * ld + j : j * ld + i;
}

namespace wmma = nvcuda::wmma;

template <class In>
struct WmmaShape {  // __half, __nv_bfloat16
  using Frag = In;
  static constexpr int kK = 16;
};
template <>
struct WmmaShape<float> {
  using Frag = wmma::precision::tf32;
  static constexpr int kK = 8;
};

template <class Layout>
using WmmaLayout = std::conditional_t<std::is_same<Layout, RowMajor>::value, wmma::row_major, wmma::col_major>;

template <class In, int kThreads>
struct WmmaMma {
  using Elem = In;
  static constexpr int kK = WmmaShape<In>::kK;
  // 16 bytes of padding per row: consecutive rows start in different banks, and rows stay 16-byte aligned so that
  // 16 fragment rows span a multiple of 32 bytes (WMMA pointers must be 32-byte aligned).
  static constexpr int kPad = 16 / sizeof(In);
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;

  // The (M/16 x N/16) fragment grid is split over a (kWarpsM x kWarpsN) grid of warps, each owning a contiguous
  // (kFragsM x kFragsN) block of fragments. Where there are fewer fragments than warps the extra warps idle.
  template <int M, int N>
  struct Acc {
    static constexpr int kWarps = kThreads / 32, kTilesM = M / 16, kTilesN = N / 16;
    static constexpr int kWarpsM = kTilesM < kWarps ? kTilesM : kWarps;
    static constexpr int kWarpsN = kTilesN < kWarps / kWarpsM ? kTilesN : kWarps / kWarpsM;
    static constexpr int kFragsM = kTilesM / kWarpsM, kFragsN = kTilesN / kWarpsN;
    static_assert(M % 16 == 0 && N % 16 == 0, "WMMA tiles are 16 x 16");
    static_assert(kTilesM % kWarpsM == 0 && kTilesN % kWarpsN == 0, "fragments must split evenly over warps");

    __device__ static int warp() { return threadIdx.x / 32; }
    __device__ static bool active() { return warp() < kWarpsM * kWarpsN; }
    __device__ static int row0() { return warp() % kWarpsM * kFragsM * 16; }
    __device__ static int col0() { return warp() / kWarpsM * kFragsN * 16; }

    FragC f[kFragsM][kFragsN];
  };

  struct RowMap {
    int row[FragC::num_elements];
  };

  // scratch: 256 floats of shared memory, 32-byte aligned, free until the call returns. Call from every thread.
  __device__ static RowMap row_map(float* scratch) {
    for (int i = threadIdx.x; i < 256; i += kThreads) scratch[i] = static_cast<float>(i / 16);
    __syncthreads();
    FragC rows;
    wmma::load_matrix_sync(rows, scratch, 16, wmma::mem_row_major);
    RowMap map;
#pragma unroll
    for (int t = 0; t < FragC::num_elements; ++t) map.row[t] = static_cast<int>(rows.x[t]);
    __syncthreads();
    return map;
  }

  template <int M, int N>
  __device__ static void zero(Acc<M, N>& c) {
#pragma unroll
    for (int i = 0; i < Acc<M, N>::kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < Acc<M, N>::kFragsN; ++j) wmma::fill_fragment(c.f[i][j], 0.f);
  }

  // c += A * B over k in [0, K). A(m, k) at a[offset<LA>(m, k, lda)], B(k, n) at b[offset<LB>(k, n, ldb)].
  template <int K, class LA, class LB, int M, int N>
  __device__ static void gemm(Acc<M, N>& c, const In* a, int lda, const In* b, int ldb) {
    using C = Acc<M, N>;
    static_assert(K % kK == 0, "the reduction length must be a whole number of WMMA steps");
    if (!C::active()) return;
    const int m0 = C::row0(), n0 = C::col0();
#pragma unroll 2
    for (int k = 0; k < K; k += kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kK, typename WmmaShape<In>::Frag, WmmaLayout<LA>> fa[C::kFragsM];
      wmma::fragment<wmma::matrix_b, 16, 16, kK, typename WmmaShape<In>::Frag, WmmaLayout<LB>> fb[C::kFragsN];
#pragma unroll
      for (int i = 0; i < C::kFragsM; ++i) {
        wmma::load_matrix_sync(fa[i], a + offset<LA>(m0 + 16 * i, k, lda), lda);
        to_tf32(fa[i]);
      }
#pragma unroll
      for (int j = 0; j < C::kFragsN; ++j) {
        wmma::load_matrix_sync(fb[j], b + offset<LB>(k, n0 + 16 * j, ldb), ldb);
        to_tf32(fb[j]);
      }
#pragma unroll
      for (int i = 0; i < C::kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < C::kFragsN; ++j) wmma::mma_sync(c.f[i][j], fa[i], fb[j], c.f[i][j]);
    }
  }

  // Row r of c *= factor[r] (factor in shared memory, indexed by the accumulator's row).
  template <int M, int N>
  __device__ static void scale_rows(Acc<M, N>& c, const RowMap& map, const float* factor) {
    using C = Acc<M, N>;
    if (!C::active()) return;
#pragma unroll
    for (int i = 0; i < C::kFragsM; ++i)
#pragma unroll
      for (int t = 0; t < FragC::num_elements; ++t) {
        const float s = factor[C::row0() + 16 * i + map.row[t]];
#pragma unroll
        for (int j = 0; j < C::kFragsN; ++j) c.f[i][j].x[t] *= s;
      }
  }

  // dst(m, n) = c(m, n), dst row-major with row stride ldd (a multiple of 4).
  template <int M, int N>
  __device__ static void store(const Acc<M, N>& c, float* dst, int ldd) {
    using C = Acc<M, N>;
    if (!C::active()) return;
#pragma unroll
    for (int i = 0; i < C::kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < C::kFragsN; ++j)
        wmma::store_matrix_sync(dst + (C::row0() + 16 * i) * ldd + C::col0() + 16 * j, c.f[i][j], ldd,
                                wmma::mem_row_major);
  }

 private:
  template <class Frag>
  __device__ static void to_tf32(Frag& f) {
    if constexpr (std::is_same<In, float>::value) {
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
    }
  }
};

template <int kThreads>
struct SimtMma {
  using Elem = float;
  // An odd row stride puts a column walk (consecutive rows, one column) on 32 distinct banks.
  static constexpr int kPad = 1;

  // Thread t owns rows (t / kThreadsN) + i * kThreadsM and columns (t % kThreadsN) + j * kThreadsN: a warp spans
  // consecutive columns of one or two rows, so B loads are conflict-free and A loads broadcast. 16 threads along N
  // (32 for N >= 256) keep the micro-tiles near square: fewer shared loads per FMA.
  template <int M, int N>
  struct Acc {
    static constexpr int kThreadsN = N >= 256 ? 32 : N < 16 ? N : 16, kThreadsM = kThreads / kThreadsN;
    static_assert(kThreads % kThreadsN == 0 && M % kThreadsM == 0 && N % kThreadsN == 0,
                  "the micro-tiles must cover the block evenly");
    static constexpr int kRows = M / kThreadsM, kCols = N / kThreadsN;

    __device__ static int tm() { return threadIdx.x / kThreadsN; }
    __device__ static int tn() { return threadIdx.x % kThreadsN; }

    float v[kRows][kCols];
  };

  struct RowMap {};
  __device__ static RowMap row_map(float*) { return {}; }

  template <int M, int N>
  __device__ static void zero(Acc<M, N>& c) {
#pragma unroll
    for (int i = 0; i < Acc<M, N>::kRows; ++i)
#pragma unroll
      for (int j = 0; j < Acc<M, N>::kCols; ++j) c.v[i][j] = 0.f;
  }

  template <int K, class LA, class LB, int M, int N>
  __device__ static void gemm(Acc<M, N>& c, const float* a, int lda, const float* b, int ldb) {
    using C = Acc<M, N>;
    const int tm = C::tm(), tn = C::tn();
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      float ra[C::kRows], rb[C::kCols];
#pragma unroll
      for (int i = 0; i < C::kRows; ++i) ra[i] = a[offset<LA>(tm + i * C::kThreadsM, k, lda)];
#pragma unroll
      for (int j = 0; j < C::kCols; ++j) rb[j] = b[offset<LB>(k, tn + j * C::kThreadsN, ldb)];
#pragma unroll
      for (int i = 0; i < C::kRows; ++i)
#pragma unroll
        for (int j = 0; j < C::kCols; ++j) c.v[i][j] = fmaf(ra[i], rb[j], c.v[i][j]);
    }
  }

  template <int M, int N>
  __device__ static void scale_rows(Acc<M, N>& c, const RowMap&, const float* factor) {
    using C = Acc<M, N>;
#pragma unroll
    for (int i = 0; i < C::kRows; ++i) {
      const float s = factor[C::tm() + i * C::kThreadsM];
#pragma unroll
      for (int j = 0; j < C::kCols; ++j) c.v[i][j] *= s;
    }
  }

  template <int M, int N>
  __device__ static void store(const Acc<M, N>& c, float* dst, int ldd) {
    using C = Acc<M, N>;
#pragma unroll
    for (int i = 0; i < C::kRows; ++i)
#pragma unroll
      for (int j = 0; j < C::kCols; ++j)
        dst[(C::tm() + i * C::kThreadsM) * ldd + C::tn() + j * C::kThreadsN] = c.v[i][j];
  }
};

// The policies by the name the kernels are instantiated with: (storage dtype, threads per block) -> policy.
template <class T, int kThreads>
using TensorCoreMma = WmmaMma<T, kThreads>;
template <class T, int kThreads>
using ExactMma = SimtMma<kThreads>;

}  // namespace lstm_attn::gpu
