// The flash plan of CUDA attention + residual + LayerNorm: FlashAttention-2's structure on mma.sync, for 16-bit inputs
// with H <= 128. Untested on a GPU until the device run that measures it (lstm_attn/plans.py says where it runs).
//
// Forward (fwd.cuh; a block = BM = 64 query rows of one batch, 4 warps, each warp owning 16 query rows):
//   Q is copied into shared memory and then into registers once (A fragments). K and V stream through kStages = 3
//   shared-memory stages filled by cp.async, so the copy of key tile j + 2 overlaps the products of tile j; one
//   __syncthreads per key tile both publishes tile j and frees the stage that the next copy overwrites. Per tile each
//   warp computes S = Q K^T for its 16 rows (mma.sync m16n8k16, K's B fragments by ldmatrix), the online softmax in
//   registers (a row lives in one quad of lanes: two shuffles per row statistic), rescales its O accumulator and adds
//   P V with P taken straight from S's accumulator registers (FlashAttention-2's register reuse) and V's B fragments
//   by ldmatrix.trans. Nothing of S or P touches shared memory. The epilogue normalises O, rounds attn, adds the
//   residual and applies the LayerNorm in registers, with the row's mean and variance reduced over the quad.
// Backward (bwd.cuh; a block = BN = 64 keys of one batch, 4 warps, each warp owning 16 keys; query tiles of BM = 32):
//   K and V stay in shared memory; Q, dO and the rows' lse and delta stream through two cp.async stages. Per query
//   tile each warp computes S^T = K Q^T and dP^T = V dO^T for its keys, P^T and dS^T = P^T (dP^T - delta) in
//   registers, and accumulates dV += P^T dO and dK += dS^T Q with P^T and dS^T as register A fragments; dS^T goes to
//   shared memory once, and after a barrier the block computes the tile's share of dQ = dS K, each warp a 16 x H/2
//   quarter. The shares of the key blocks are added into a float32 dQ buffer in key-block order: key block n waits,
//   per (query tile, quarter), until block n - 1 has added its share (a counter released and acquired at gpu scope),
//   so every dQ element is summed in the same order on every run -- deterministic, without the separate dQ kernel
//   that recomputes S and dP (7 GEMM-equivalents per forward + backward, not 9). A block takes its (batch, key
//   block) from a ticket counter as it starts, so block n - 1 has started before block n waits for it, whatever
//   order the hardware starts blocks in. A last kernel scales the float32 dQ and rounds it.
//
// Shared memory tiles are row-major with HB (the head-dim bucket) 16-bit columns and no padding; the 16-byte chunks of
// a row are XOR-swizzled (Swizzled below) so that the eight row addresses of an ldmatrix, and cp.async's row writes,
// fall in distinct banks. Rows past Tq or Tk and columns past H are zero-filled (cp.async's src-size 0), so products
// over HB are exact; scores of keys past Tk are set to -inf, probabilities of padded rows and keys to 0.
//
// Per block: 128 threads; dynamic shared memory; registers per thread from ptxas (nvcc 13.0, sm_90, no spills in
// any of them); blocks per SM that these allow on an H100/H200 (64 K registers, 228 KB shared memory per SM):
//   HB    fwd (BM 64, BN 64, 3 stages)          bwd (BN 64, BM 32, 2 stages)
//   32     28 KB, 148 registers: 3 blocks        21 KB, 160 registers: 3 blocks
//   64     56 KB, 191 registers: 2 blocks        37 KB, 187 registers: 2 blocks
//   128   112 KB, 240 registers: 2 blocks        69 KB, 249 registers: 2 blocks
// Registers, not shared memory, set the occupancy below HB = 128, and they are well above what the accumulators need
// (fwd at HB = 32: 64 floats of S and O, 8 of Q): the rest are addresses and temporaries of the unrolled loops. The
// backward's k-step loops are kept rolled: unrolled, ptxas spilled 32 bytes at HB = 128.
#pragma once

#include <cstdint>

#include "cuda/attention/attention_layernorm.cuh"
#include "cuda/attention/flash/ptx.cuh"
#include "cuda/common.cuh"
#include "kernel_limits.h"

namespace lstm_attn::gpu::flash {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMaxHeadDim = ::lstm_attn::kFlashMaxHeadDim;

struct FwdTiles {
  static constexpr int BM = 16 * kWarps, BN = 64, kStages = 3;
};
struct BwdTiles {
  static constexpr int BN = 16 * kWarps, BM = 32, kStages = 2;
  static constexpr int kDqParts = 4;  // a query tile's dQ (BM x HB) in 2 x 2 quarters, one per warp
};

// A kRows x kCols tile of 16-bit elements in shared memory, row-major without padding, the 16-byte chunks of a row
// permuted by XOR with a function of the row: the 8 rows one ldmatrix phase reads at one logical chunk land in 8
// distinct 16-byte bank groups.
template <int kRows, int kCols>
struct Swizzled {
  static constexpr int kChunks = kCols / 8;                         // 16-byte chunks per row
  static constexpr int kRowsPerLine = kChunks >= 8 ? 1 : 8 / kChunks;  // rows sharing one 128-byte bank line
  static constexpr int kXor = kChunks >= 8 ? 8 : kChunks;
  static constexpr int kElems = kRows * kCols;
  static_assert(kCols % 8 == 0 && (kChunks & (kChunks - 1)) == 0, "rows of a power-of-two number of chunks");
  // Element offset of (row r, column c); c may be any column, the chunk is c / 8.
  __device__ static int offset(int r, int c) {
    return r * kCols + (((c / 8) ^ ((r / kRowsPerLine) % kXor)) * 8) + c % 8;
  }
};

// Copies rows [0, rows) x columns [0, H) of a row-major global matrix (row stride H) into a swizzled kRows x HB tile,
// zero-filling the rest. vec: rows are 16-byte aligned (H % 8 == 0 and aligned bases), so whole chunks go by cp.async;
// otherwise element by element, synchronously (the caller's barriers order both alike).
template <int kRows, int HB, class T>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int rows, int H, bool vec) {
  using L = Swizzled<kRows, HB>;
  if (vec) {
    for (int c = threadIdx.x; c < kRows * L::kChunks; c += kThreads) {
      const int r = c / L::kChunks, h = c % L::kChunks * 8;
      const bool inside = r < rows && h < H;
      cp_async_16(dst + L::offset(r, h), inside ? src + static_cast<int64_t>(r) * H + h : src, inside ? 16 : 0);
    }
  } else {
    for (int c = threadIdx.x; c < kRows * HB; c += kThreads) {
      const int r = c / HB, h = c % HB;
      dst[L::offset(r, h)] = r < rows && h < H ? src[static_cast<int64_t>(r) * H + h] : from_float<T>(0.f);
    }
  }
}

// A row of C fragments: the 16 x (8 kBlocks) float32 accumulator one warp holds, in the layout of ptx.cuh.
template <int kBlocks>
using Acc = float[kBlocks][4];

// The A fragment of k-step kk (16 x 16) made of the C fragments 2 kk and 2 kk + 1 rounded to T: how a product's
// result becomes the left operand of the next one without leaving registers (FlashAttention-2's P).
template <class T, int kBlocks>
__device__ __forceinline__ void a_from_acc(uint32_t (&a)[4], const Acc<kBlocks>& c, int kk) {
  a[0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// Sums over the four lanes of a quad: the lanes that hold one row of a C fragment.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// Defined in flash/{fwd,bwd}_hdimHB.cu for HB in {32, 64, 128}, where compiled.
template <int HB>
void fwd_bucket(const AttnFwdParams& p, c10::ScalarType dtype, cudaStream_t stream);
template <int HB>
void bwd_bucket(const AttnBwdParams& p, c10::ScalarType dtype, cudaStream_t stream);

// flash/dq.cu: grad_q = dq_accum * scale, rounded to the input dtype.
void dq_convert(const float* dq_accum, int64_t n, float scale, void* grad_q, c10::ScalarType dtype,
                cudaStream_t stream);

// The ints of AttnBwdParams::dq_order, zeroed before the backward runs: the block ticket, then a counter per
// (batch, query tile, dQ quarter). Zeroed with the counters, the ticket needs no reset of its own, also in a
// CUDA graph (the zeroing is a memset node that every replay repeats).
inline int64_t dq_order_ints(int B, int Tq) {
  return 1 + static_cast<int64_t>(B) * ((Tq + BwdTiles::BM - 1) / BwdTiles::BM) * BwdTiles::kDqParts;
}

}  // namespace lstm_attn::gpu::flash
