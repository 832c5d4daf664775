// The tiled plan of CUDA attention + residual + LayerNorm: its design, tile shapes, shared tile I/O, and the per-bucket
// launchers. It is the first design, kept as the plan for the shapes where it measured well (lstm_attn/plans.py).
//
// Design
// ------
// The algorithm is FlashAttention-2's, with the LayerNorm fused into the forward epilogue and its backward run
// first in the backward pass. Shapes: q, residual (B, Tq, H); k, v (B, Tk, H); single head, non-causal.
//
// Head-dim buckets. H is padded up to a bucket HB in {32, 64, 128, 256, 512}; each bucket is compiled in its own
// files (tiled/{fwd,bwd}_hdimHB.cu) so the build parallelises and LSTM_ATTN_HEAD_DIMS can trim it. Padded
// columns [H, HB) and rows past Tq or Tk are zero-filled in shared memory, so products over HB are exact; scores of
// keys past Tk are masked explicitly (their probability is 0). Every tile has at least one real key (Tk >= 1), so
// the running maximum is finite after the first tile.
//
// Paths (MmaPath) choose the block-level product (tiled/mma.cuh):
//   kHalf, kBFloat16   WMMA m16n16k16, float accumulators
//   kTf32              WMMA m16n16k8 tf32 (float storage), when torch.backends.cuda.matmul.allow_tf32 is set
//   kFloat             exact float32 SIMT FFMA otherwise
// Every path accumulates in float32; softmax statistics and LayerNorm are float32.
//
// Kernels (grid: one block per (batch, tile), flattened into blockIdx.x with the batch outermost):
//   fwd    block = BM query rows. Q tile stays in shared memory; K and V tiles of BN keys stream through it.
//          Per key tile: S = Q K^T (scores, float, shared) -> online softmax by NT/BM threads per row, whose running
//          max and sum stay in their registers; P (operand dtype, shared) and the per-row rescale factor alpha ->
//          O = alpha * O + P V, O held in registers (the accumulator). Epilogue: O to shared memory (over the
//          Q/K/V space), then a warp per row: attn = O / l, y = attn + residual, two-pass mean/variance, LayerNorm,
//          the only global writes (out, attn, lse, mean, rstd).
//   bwd    1. layernorm_bwd (../layernorm_bwd.cu): a warp per row: dy (= grad_residual = dO, stored in the input
//             dtype), delta = rowsum(attn * dO) from the stored dO, and per-block float32 partial sums of
//             grad_weight / grad_bias, reduced over blocks in a fixed order by a second kernel: deterministic.
//          2. dK/dV: block = BN keys (K, V tiles resident), loops over query tiles of BM rows: S = Q K^T and
//             dP = dO V^T -> P = exp(S * scale - lse), dS = P (dP - delta) -> dV += P^T dO, dK += dS^T Q.
//          3. dQ: block = BM queries (Q, dO resident), loops over key tiles: S, dP as above -> dQ += dS K.
//          dK and dQ are multiplied by scale when written. No atomics anywhere.
//
// Thread -> data. Tensor-core paths: the (M/16 x N/16) fragment grid of each product is split over a grid of warps,
// each owning a contiguous block of 16x16 fragments (WmmaMma::Acc); a warp loads its A fragments once per k-step and
// reuses them across its B fragments. Exact path: thread t owns a strided micro-tile, columns t % c + c * j and rows
// t / c + (NT / c) * i, with c = 16 threads along N (32 where N >= 256) (SimtMma::Acc). Softmax phase: NT / BM
// consecutive lanes per score row. Tile loads and stores: consecutive threads on consecutive 16-byte vectors (or
// elements) of a row; LayerNorm epilogue: a warp per row, lane l on columns l + 32 * i.
//
// Tiles: fwd and dQ blocks own BM query rows and step over BN keys; dK/dV blocks own BN keys and step over BM query
// rows. Per block: tile, threads, dynamic shared memory in KB (the layouts' kBytes):
//   HB   storage   fwd BMxBN            dK/dV BNxBM          dQ BMxBN
//   32   16-bit    64x64 128  41.8      64x64 128  72.5      64x64 128  63.5
//        tf32      64x64 128  44.8      64x64 128  70.5      64x64 128  70.5
//        exact     64x64 128  42.5      64x64 128  67.5      64x64 128  67.5
//   64   16-bit    64x64 128  53.8      64x64 128  88.5      64x64 128  79.5
//        tf32      64x64 128  68.8      64x64 128 102.5      64x32 128  69.5
//        exact     64x64 128  66.5      64x64 128  99.5      64x32 128  67.2
//   128  16-bit    64x64 128  77.8      32x64 128  79.5      64x32 128  74.5
//        tf32      64x32 128  75.8      32x32 128  75.2      32x32 128  75.2
//        exact     64x32 128  74.2      32x32 128  73.8      32x32 128  73.8
//   256  16-bit    32x64 128  95.9      32x32 256  80.2      32x32 128  77.8
//        tf32      32x32 128 102.4      32x16 256 102.1      32x16 128 102.8
//        exact     32x32 128 101.2      32x16 256 101.1      32x16 128 101.8
//   512  16-bit    32x32 256 104.9      16x32 256 105.8      32x16 256 104.2
//        tf32      32x16 256 131.9      16x16 256 131.6      16x16 128 131.6
//        exact     32x16 256 131.2      16x16 256 131.1      16x16 128 131.1
// Shared memory holds the operand tiles (rows padded by 16 bytes, by one float on the exact path, so a column walk
// or a ldmatrix-style row walk is conflict-free), float score tiles S, dP (BN + 4 columns), the 16-bit P / dS operand
// copies (float paths compute those in place of S / dP), and row statistics; epilogues stage the float accumulator
// over the operand tiles. Every layout fits the 163 KB an A100 block may opt into (launch() opts in above 48 KB);
// accumulators total at most 64 floats per thread, and no kernel spills on sm_80 or sm_90 (nvcc 13.0).
//
// Occupancy, from ptxas on sm_90 (nvcc 13.0; --resource-usage on the 128 and 512 buckets): 124 to 255 registers
// per thread. With that and 74-132 KB of shared memory a block, an SM holds one to three blocks: 8 to 12 warps at
// H = 128, and at H = 512 a single block of 4 or 8 warps whose streamed tiles are 16 to 32 rows, with 4 barriers
// per tile: little to hide latency with. Nsight Compute on the H200 (benchmarks/results/ncu-*.md) measured it: the
// H = 512 attention kernels run at 6.25-12.5 % occupancy, achieved as theoretical, and took 20.6 ms of device time
// per float32 forward+backward at T = 1024 where the reference's cuBLAS products took 2.5 ms.
//
// Sync points per streamed tile: (1) before overwriting the streamed tiles, (2) after loading them, (3) after the
// score products are stored, (4) after P / dS (and the fwd rescale factors) are written; then the accumulating
// products run and the loop returns to (1). Epilogues add one sync before reusing the tile space and one after
// staging the accumulator (dK/dV: two more around the second staging).
#pragma once

#include <cstdint>

#include "cuda/attention/attention_layernorm.cuh"
#include "cuda/common.cuh"

namespace lstm_attn::gpu {

enum class MmaPath { kHalf, kBFloat16, kTf32, kFloat };

template <int BM_, int BN_, int kThreads_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, kThreads = kThreads_;
};

// Tiles<HB, bytes per stored element>: Fwd, DkDv, Dq. BM counts query rows, BN key rows, in every kernel.
template <int HB, int kElemBytes>
struct Tiles;
template <>
struct Tiles<32, 2> {
  using Fwd = Tile<64, 64, 128>;
  using DkDv = Tile<64, 64, 128>;
  using Dq = Tile<64, 64, 128>;
};
template <>
struct Tiles<64, 2> {
  using Fwd = Tile<64, 64, 128>;
  using DkDv = Tile<64, 64, 128>;
  using Dq = Tile<64, 64, 128>;
};
template <>
struct Tiles<128, 2> {
  using Fwd = Tile<64, 64, 128>;
  using DkDv = Tile<64, 32, 128>;
  using Dq = Tile<64, 32, 128>;
};
template <>
struct Tiles<256, 2> {
  using Fwd = Tile<32, 64, 128>;
  using DkDv = Tile<32, 32, 256>;
  using Dq = Tile<32, 32, 128>;
};
template <>
struct Tiles<512, 2> {
  using Fwd = Tile<32, 32, 256>;
  using DkDv = Tile<32, 16, 256>;
  using Dq = Tile<32, 16, 256>;
};
template <>
struct Tiles<32, 4> {
  using Fwd = Tile<64, 64, 128>;
  using DkDv = Tile<64, 64, 128>;
  using Dq = Tile<64, 64, 128>;
};
template <>
struct Tiles<64, 4> {
  using Fwd = Tile<64, 64, 128>;
  using DkDv = Tile<64, 64, 128>;
  using Dq = Tile<64, 32, 128>;
};
template <>
struct Tiles<128, 4> {
  using Fwd = Tile<64, 32, 128>;
  using DkDv = Tile<32, 32, 128>;
  using Dq = Tile<32, 32, 128>;
};
template <>
struct Tiles<256, 4> {
  using Fwd = Tile<32, 32, 128>;
  using DkDv = Tile<16, 32, 256>;
  using Dq = Tile<32, 16, 128>;
};
template <>
struct Tiles<512, 4> {
  using Fwd = Tile<32, 16, 256>;
  using DkDv = Tile<16, 16, 256>;
  using Dq = Tile<16, 16, 128>;
};

// An A100 block may opt into 163 KB of shared memory (an H100 block 227 KB).
constexpr size_t kMaxSmemBytes = 163 * 1024;

// Copies rows [0, rows) x columns [0, H) of a row-major (., H) global matrix into a kRows x kHB shared tile with row
// stride kLd, writing zeros to the rest of the tile so that products over kHB columns are exact.
template <int kRows, int kHB, int kLd, int kThreads, class T>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, const T* __restrict__ src, int rows, int H, bool vec) {
  if (vec) {
    constexpr int kVec = 16 / sizeof(T), kPerRow = kHB / kVec;
    for (int c = threadIdx.x; c < kRows * kPerRow; c += kThreads) {
      const int r = c / kPerRow, h = c % kPerRow * kVec;
      uint4 x = make_uint4(0, 0, 0, 0);
      if (r < rows && h < H) x = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(r) * H + h);
      if constexpr (kLd * sizeof(T) % 16 == 0) {
        *reinterpret_cast<uint4*>(dst + r * kLd + h) = x;
      } else {
        const T* e = reinterpret_cast<const T*>(&x);
#pragma unroll
        for (int i = 0; i < kVec; ++i) dst[r * kLd + h + i] = e[i];
      }
    }
  } else {
    for (int c = threadIdx.x; c < kRows * kHB; c += kThreads) {
      const int r = c / kHB, h = c % kHB;
      dst[r * kLd + h] = r < rows && h < H ? src[static_cast<int64_t>(r) * H + h] : from_float<T>(0.f);
    }
  }
}

// dst(r, h) = scale * src(r, h) for rows [0, rows) and columns [0, H); dst row-major with row stride H.
template <int kRows, int kHB, int kThreads, class T>
__device__ __forceinline__ void store_tile(T* __restrict__ dst, const float* src, int ld, int rows, int H,
                                           float scale) {
  for (int c = threadIdx.x; c < kRows * kHB; c += kThreads) {
    const int r = c / kHB, h = c % kHB;
    if (r < rows && h < H) dst[static_cast<int64_t>(r) * H + h] = from_float<T>(scale * src[r * ld + h]);
  }
}

// Defined in tiled/{fwd,bwd}_hdimHB.cu, one explicit instantiation per compiled bucket.
template <int HB>
void attention_fwd_bucket(const AttnFwdParams& p, MmaPath path, cudaStream_t stream);
template <int HB>
void attention_bwd_bucket(const AttnBwdParams& p, MmaPath path, cudaStream_t stream);

}  // namespace lstm_attn::gpu
