// The fused LSTM's kernels, their shared-memory layouts and launchers (the design is in lstm.h). Included only by
// the per-bucket files lstm_hdim<Hp>.cu, each of which compiles one bucket's kernels for every path.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/lstm/lstm.h"
#include "cuda/mma.cuh"
#include "lstm_cell.h"

namespace lstm_attn::gpu::lstm {

// Shapes and shared-memory layout of one (storage type, product policy, bucket).
template <class T_, class Mma_, int kHp>
struct Config {
  using T = T_;
  using Mma = Mma_;
  static constexpr int Hp = kHp;
  static constexpr int kLayers = Hp <= 128 ? 2 : 1;
  static constexpr int kPad = Mma::kPad;

  static constexpr int kw(int g) { return g == 0 ? Hp : 2 * Hp; }  // weight slice columns = product depth, forward
  static constexpr int ldw(int g) { return kw(g) + kPad; }
  // hbuf rows: [h_0 | x_1 | h_1]: layer 1's operand [x_1 | h_1] is contiguous.
  static constexpr int off_h(int g) { return 2 * g * Hp; }
  static constexpr int off_x(int g) { return (2 * g - 1) * Hp; }
  static constexpr int ldh = Hp * (2 * kLayers - 1) + kPad;
  static constexpr int nb(int g) { return kw(g); }  // backward product columns: [dx | dh] or [dh]

  static constexpr size_t weight_bytes(int hs) {
    size_t bytes = 0;
    for (int g = 0; g < kLayers; ++g) bytes += align128(size_t(4) * hs * ldw(g) * sizeof(T));
    return bytes;
  }
  static constexpr int ldgates(int hs) { return 4 * hs + 4; }
  static constexpr int lddpre(int hs) { return 4 * hs + kPad; }
  static constexpr int ldacc(int g) { return nb(g) + 4; }
  static constexpr size_t hbuf_bytes = align128(size_t(kRows) * ldh * sizeof(T));
  static constexpr size_t red_floats = size_t(kRows) * Hp * (2 * kLayers - 1);  // per buffer
  static constexpr size_t fwd_bytes(int hs) {
    return weight_bytes(hs) + 2 * hbuf_bytes + kLayers * align128(size_t(kRows) * ldgates(hs) * sizeof(float));
  }
  static constexpr size_t bwd_bytes(int hs) {
    size_t bytes = weight_bytes(hs) + 2 * align128(red_floats * sizeof(float));
    for (int g = 0; g < kLayers; ++g)
      bytes += align128(size_t(kRows) * lddpre(hs) * sizeof(T)) + align128(size_t(kRows) * ldacc(g) * sizeof(float));
    return bytes;
  }
  static constexpr int pick_units() {
    for (int hs = 64; hs >= 16; hs /= 2)
      if (hs <= Hp && Hp / hs <= kMaxCluster && fwd_bytes(hs) <= kSmemBudget && bwd_bytes(hs) <= kSmemBudget)
        return hs;
    return 0;
  }

  static constexpr int hs = pick_units();  // units per block
  static constexpr int kCluster = Hp / (hs > 0 ? hs : 1);
  static constexpr int kPairs = kRows * hs / kThreads;  // (row, unit) cells per thread and layer
  static_assert(hs > 0, "no block shape fits this bucket's buffers in shared memory");
  static_assert(kRows * hs % kThreads == 0, "cells must split evenly over the threads");
  static_assert(Hp % 16 == 0 && (4 * hs) % 16 == 0, "tensor-core tiles are 16 wide");
  static constexpr size_t kFwdBytes = fwd_bytes(hs), kBwdBytes = bwd_bytes(hs);
};

// --- clusters: one block behaves as a cluster of one, with no cluster hardware needed (sm_80 runs those) ---------

namespace cg = cooperative_groups;

template <int kCluster>
__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster > 1) return static_cast<int>(cg::this_cluster().block_rank());
#endif
  return 0;
}

template <int kCluster, class P>
__device__ __forceinline__ P* block_smem(P* local, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster > 1) return cg::this_cluster().map_shared_rank(local, rank);
#endif
  return local;
}

// Every thread of every block of the cluster arrives; shared-memory writes before it (local or remote) are visible
// to every thread of the cluster after it (barrier.cluster arrive has release, wait acquire semantics).
template <int kCluster>
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster > 1) {
    cg::this_cluster().sync();
    return;
  }
#endif
  __syncthreads();
}

// --- shared memory ------------------------------------------------------------------------------------------------

// Copies `rows` rows of `cols` elements from global (row stride cols) to shared memory (row stride ld).
template <class T>
__device__ void load_rows(T* dst, int ld, const T* src, int rows, int cols) {
  if constexpr (16 % sizeof(T) == 0) {
    constexpr int kVec = 16 / sizeof(T);
    // Both sides stay 16-byte aligned when ld and cols are whole vectors (16-bit and tf32 paths: ld = cols + 8 or
    // + 4 elements); the exact path's odd ld takes elements.
    if ((ld % kVec) == 0 && (cols % kVec) == 0) {
      const int vecs = cols / kVec;
      for (int i = threadIdx.x; i < rows * vecs; i += kThreads) {
        const int r = i / vecs, v = i % vecs;
        *reinterpret_cast<uint4*>(dst + r * ld + v * kVec) = *reinterpret_cast<const uint4*>(src + r * cols + v * kVec);
      }
      return;
    }
  }
  for (int i = threadIdx.x; i < rows * cols; i += kThreads) dst[(i / cols) * ld + i % cols] = src[i];
}

template <class T>
__device__ void zero_shared(T* dst, size_t elems) {
  for (size_t i = threadIdx.x; i < elems; i += kThreads) dst[i] = from_float<T>(0.f);
}

// The (row, unit) cell of pair k of this thread: rows of hs consecutive units, consecutive threads on consecutive
// units (coalesced global rows, conflict-free shared rows).
template <class Cfg>
struct Cell {
  int r, u;
  __device__ Cell(int k) : r((threadIdx.x + k * kThreads) / Cfg::hs), u((threadIdx.x + k * kThreads) % Cfg::hs) {}
};

template <class T>
__device__ __forceinline__ float load_float(const void* base, int64_t i) {
  return to_float(static_cast<const T*>(base)[i]);
}

// Places the weight slices of every layer at the start of dynamic shared memory (both kernels' layout) and loads
// this block's slices of the group's layers; returns the bytes they take.
template <class Cfg>
__device__ size_t load_weight_slices(unsigned char* smem, const void* const (&w)[kMaxLayers], int rank, int layers,
                                     typename Cfg::T* (&w_s)[Cfg::kLayers]) {
  using T = typename Cfg::T;
  size_t offset = 0;
#pragma unroll
  for (int g = 0; g < Cfg::kLayers; ++g) {
    w_s[g] = reinterpret_cast<T*>(smem + offset);
    offset += align128(size_t(4) * Cfg::hs * Cfg::ldw(g) * sizeof(T));
    if (g < layers)  // the loops over layers run to kLayers, unrolled, so that pointer arrays stay in registers
      load_rows(w_s[g], Cfg::ldw(g), static_cast<const T*>(w[g]) + int64_t(rank) * 4 * Cfg::hs * Cfg::kw(g),
                4 * Cfg::hs, Cfg::kw(g));
  }
  return offset;
}

// --- forward ------------------------------------------------------------------------------------------------------

template <class Cfg>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) lstm_fwd_kernel(const FwdParams p) {
  using T = typename Cfg::T;
  using Mma = typename Cfg::Mma;
  constexpr int hs = Cfg::hs, G = Cfg::kLayers, kPairs = Cfg::kPairs;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (Cfg::kCluster > 1) {
    __trap();  // the host never launches a cluster below sm_90
    return;
  }
#endif
  extern __shared__ __align__(128) unsigned char smem[];
  const int rank = cluster_rank<Cfg::kCluster>();
  const int B = p.B, T_ = p.T, H = p.H, layers = p.layers;
  T* w_s[G];
  float* gates_s[G];
  size_t offset = load_weight_slices<Cfg>(smem, p.w, rank, layers, w_s);
  // The two h buffers, adjacent: buffer i at hbuf + i * kHbufElems (an offset, not a pointer array, which a
  // run-time index would put in local memory).
  T* const hbuf = reinterpret_cast<T*>(smem + offset);
  constexpr int kHbufElems = Cfg::hbuf_bytes / sizeof(T);
  offset += 2 * Cfg::hbuf_bytes;
  for (int g = 0; g < G; ++g) {
    gates_s[g] = reinterpret_cast<float*>(smem + offset);
    offset += align128(size_t(kRows) * Cfg::ldgates(hs) * sizeof(float));
  }

  const int row0 = static_cast<int>(blockIdx.x) / Cfg::kCluster * kRows, unit0 = rank * hs;
  const int64_t BH = int64_t(B) * H;

  zero_shared(hbuf, 2 * kHbufElems);
  __syncthreads();
  // Both buffers hold h0 in each layer's h slot: layer g first reads its slot in iteration g, of either parity.
#pragma unroll
  for (int g = 0; g < G; ++g)
    for (int i = threadIdx.x; g < layers && i < kRows * H; i += kThreads) {
      const int r = i / H, u = i % H;
      if (row0 + r < B) {
        const T v = static_cast<const T*>(p.h0[g])[int64_t(row0 + r) * H + u];
        hbuf[r * Cfg::ldh + Cfg::off_h(g) + u] = v;
        hbuf[kHbufElems + r * Cfg::ldh + Cfg::off_h(g) + u] = v;
      }
    }

  // Per cell, in registers (every loop over cells, layers and gates is unrolled, so the arrays are registers):
  // c_{t-1} (float32), the biases (layers above the bottom), and iteration s's inputs, loaded an iteration ahead so
  // that they arrive during the products: the bottom layer's projection at step s, and for each layer g with a layer
  // above, the dropout mask of the input it writes for that layer at its step s - g (1: no dropout).
  float c[G][kPairs], bias[G][kPairs][4], pre_in[kPairs][4], keep[G][kPairs];
  bool valid[kPairs];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const Cell<Cfg> pos(k);
    const int b = row0 + pos.r, unit = unit0 + pos.u;
    valid[k] = b < B && unit < H;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const bool live = valid[k] && g < layers;
      c[g][k] = live ? load_float<T>(p.c0[g], int64_t(b) * H + unit) : 0.f;
#pragma unroll
      for (int q = 0; q < 4; ++q) bias[g][k][q] = live && g > 0 ? p.bias[g][q * H + unit] : 0.f;
    }
  }
  auto load_inputs = [&](int s) {
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const Cell<Cfg> pos(k);
      const int b = row0 + pos.r, unit = unit0 + pos.u;
      const bool in_range = valid[k] && s < T_;
#pragma unroll
      for (int q = 0; q < 4; ++q)
        pre_in[k][q] = in_range ? p.proj[(int64_t(s) * B + b) * 4 * H + q * H + unit] : 0.f;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int t = s - g;
        keep[g][k] = 1.f;
        if (valid[k] && g + 1 < layers && p.mask[g + 1] != nullptr && t >= 0 && t < T_)
          keep[g][k] = load_float<T>(p.mask[g + 1], int64_t(t) * BH + int64_t(b) * H + unit);
      }
    }
  };
  load_inputs(0);
  cluster_barrier<Cfg::kCluster>();

  const int iterations = T_ + layers - 1;
  for (int s = 0; s < iterations; ++s) {
    const T* cur = hbuf + (s & 1) * kHbufElems;
    T* next = hbuf + ((s & 1) ^ 1) * kHbufElems;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int t = s - g;
      if (g >= layers || t < 0 || t >= T_) continue;
      typename Mma::template Acc<kRows, 4 * hs> acc;
      Mma::zero(acc);
      // Layer 0: h_0 at column 0, depth Hp. Layer 1: [x_1 | h_1] from column Hp, depth 2 Hp.
      if (g == 0)
        Mma::template gemm<Cfg::kw(0), RowMajor, ColMajor>(acc, cur + Cfg::off_h(0), Cfg::ldh, w_s[0], Cfg::ldw(0));
      else if constexpr (G > 1)
        Mma::template gemm<Cfg::kw(1), RowMajor, ColMajor>(acc, cur + Cfg::off_x(1), Cfg::ldh, w_s[1], Cfg::ldw(1));
      Mma::store(acc, gates_s[g], Cfg::ldgates(hs));
    }
    __syncthreads();  // the products are in gates_s

#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int t = s - g;
      if (g >= layers || t < 0 || t >= T_) continue;
#pragma unroll
      for (int k = 0; k < kPairs; ++k) {
        if (!valid[k]) continue;
        const Cell<Cfg> pos(k);
        const int b = row0 + pos.r, unit = unit0 + pos.u;
        const float* row = gates_s[g] + pos.r * Cfg::ldgates(hs) + pos.u;
        float pre[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) pre[q] = row[q * hs] + (g == 0 ? pre_in[k][q] : bias[g][k][q]);
        const auto r = cell::forward(pre[0], pre[1], pre[2], pre[3], c[g][k]);
        c[g][k] = r.c;
        const T h = from_float<T>(r.h);
        const bool feeds_above = g + 1 < layers;
        // Layer g + 1's input: h * mask rounded to the dtype, as torch.dropout's product is.
        const T x_above = from_float<T>(to_float(h) * keep[g][k]);
        for (int j = 0; j < Cfg::kCluster; ++j) {
          T* dst = block_smem<Cfg::kCluster>(next, j) + pos.r * Cfg::ldh;
          dst[Cfg::off_h(g) + unit] = h;
          if (feeds_above) dst[Cfg::off_x(g + 1) + unit] = x_above;
        }
        const int64_t i = int64_t(t) * BH + int64_t(b) * H + unit;
        static_cast<T*>(p.hidden[g])[i + BH] = h;
        if (p.cell[g] != nullptr) {
          p.cell[g][i] = r.c;
          float* gates = p.gates[g] + (int64_t(t) * B + b) * 4 * H + unit;
          gates[0] = r.i;
          gates[H] = r.f;
          gates[2 * H] = r.g;
          gates[3 * H] = r.o;
        }
        if (t == T_ - 1) static_cast<T*>(p.c_n[g])[int64_t(b) * H + unit] = from_float<T>(r.c);
      }
    }
    load_inputs(s + 1);
    cluster_barrier<Cfg::kCluster>();  // every h_t is in every block's next buffer; gates_s is free again
  }
}

// --- backward -----------------------------------------------------------------------------------------------------

template <class Cfg>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) lstm_bwd_kernel(const BwdParams p) {
  using T = typename Cfg::T;
  using Mma = typename Cfg::Mma;
  constexpr int Hp = Cfg::Hp, hs = Cfg::hs, G = Cfg::kLayers, kPairs = Cfg::kPairs, kCluster = Cfg::kCluster;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (kCluster > 1) {
    __trap();  // the host never launches a cluster below sm_90
    return;
  }
#endif
  extern __shared__ __align__(128) unsigned char smem[];
  const int rank = cluster_rank<kCluster>();
  const int B = p.B, T_ = p.T, H = p.H, layers = p.layers, top = p.layers - 1;
  T* w_s[G];
  T* dpre_s[G];
  float* acc_s[G];
  size_t offset = load_weight_slices<Cfg>(smem, p.w, rank, layers, w_s);
  // The two buffers of partial sums, adjacent (an offset, as hbuf in the forward).
  float* const red = reinterpret_cast<float*>(smem + offset);
  constexpr int kRedElems = align128(Cfg::red_floats * sizeof(float)) / sizeof(float);
  offset += 2 * kRedElems * sizeof(float);
  for (int g = 0; g < G; ++g) {
    dpre_s[g] = reinterpret_cast<T*>(smem + offset);
    offset += align128(size_t(kRows) * Cfg::lddpre(hs) * sizeof(T));
    acc_s[g] = reinterpret_cast<float*>(smem + offset);
    offset += align128(size_t(kRows) * Cfg::ldacc(g) * sizeof(float));
  }
  // red per buffer: layer 0 [dh], layer 1 [dx | dh]; each part a slot per source block of kRows x hs floats.
  auto red_dh = [](int g) { return size_t(kRows) * Hp * (2 * g); };
  auto red_dx = [](int g) { return size_t(kRows) * Hp * (2 * g - 1); };

  const int row0 = static_cast<int>(blockIdx.x) / kCluster * kRows, unit0 = rank * hs;
  const int64_t BH = int64_t(B) * H;

  // Cells that are never written (padded rows and units) must multiply as zeros.
#pragma unroll
  for (int g = 0; g < G; ++g)
    if (g < layers) zero_shared(dpre_s[g], size_t(kRows) * Cfg::lddpre(hs));

  // Per cell: the carried dc (float32) and step t's saved values, loaded an iteration ahead.
  struct Saved {
    float gate[4], c, c_prev, dy_or_keep;
  };
  float dc[G][kPairs];
  Saved in[G][kPairs];
  bool valid[kPairs];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const Cell<Cfg> pos(k);
    valid[k] = row0 + pos.r < B && unit0 + pos.u < H;
#pragma unroll
    for (int g = 0; g < G; ++g)
      dc[g][k] = valid[k] && g < layers ? load_float<T>(p.grad_c_n[g], int64_t(row0 + pos.r) * H + unit0 + pos.u)
                                        : 0.f;
  }
  // Iteration s's values of layer g's step t = T - 1 - (s - (top - g)), loaded an iteration ahead.
  auto load_saved = [&](int s) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int t = T_ - 1 - (s - (top - g));
#pragma unroll
      for (int k = 0; k < kPairs; ++k) {
        const Cell<Cfg> pos(k);
        const int b = row0 + pos.r, unit = unit0 + pos.u;
        Saved& v = in[g][k];
        v = Saved{{0.f, 0.f, 0.f, 0.f}, 0.f, 0.f, g == top ? 0.f : 1.f};
        if (!valid[k] || g >= layers || t < 0 || t >= T_) continue;
        const int64_t i = int64_t(t) * BH + int64_t(b) * H + unit;
        const float* gates = p.gates[g] + (int64_t(t) * B + b) * 4 * H + unit;
#pragma unroll
        for (int q = 0; q < 4; ++q) v.gate[q] = gates[q * H];
        v.c = p.cell[g][i];
        v.c_prev = t > 0 ? p.cell[g][i - BH] : load_float<T>(p.c0[g], int64_t(b) * H + unit);
        // The top layer takes dy; a layer below it, the mask of the input it gave the layer above (1: no dropout).
        if (g == top) v.dy_or_keep = p.dy[i];
        else if (p.mask[g + 1] != nullptr) v.dy_or_keep = load_float<T>(p.mask[g + 1], i);
      }
    }
  };
  load_saved(0);
  cluster_barrier<kCluster>();  // weights and zeroed operands in place in every block before any remote write

  const int iterations = T_ + layers;
  for (int s = 0; s < iterations; ++s) {
    float* red_cur = red + (s & 1) * kRedElems;
    // 1. Partial products of the preactivation gradients of step t + 1 (k >= 1: there is one).
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int k_steps = s - (top - g);
      if (g >= layers || k_steps < 1 || k_steps > T_) continue;
      if (g == 0) {
        typename Mma::template Acc<kRows, Cfg::nb(0)> acc;
        Mma::zero(acc);
        Mma::template gemm<4 * hs, RowMajor, RowMajor>(acc, dpre_s[0], Cfg::lddpre(hs), w_s[0], Cfg::ldw(0));
        Mma::store(acc, acc_s[0], Cfg::ldacc(0));
      } else if constexpr (G > 1) {
        typename Mma::template Acc<kRows, Cfg::nb(1)> acc;
        Mma::zero(acc);
        Mma::template gemm<4 * hs, RowMajor, RowMajor>(acc, dpre_s[1], Cfg::lddpre(hs), w_s[1], Cfg::ldw(1));
        Mma::store(acc, acc_s[1], Cfg::ldacc(1));
      }
    }
    __syncthreads();  // acc_s complete
    // 2. Each unit's partial sums to the block that owns the unit: slot `rank` of its red_cur.
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int k_steps = s - (top - g);
      if (g >= layers || k_steps < 1 || k_steps > T_) continue;
      const int parts = g == 0 ? 1 : 2;  // part 0 of layer 1 is dx, columns [0, Hp); dh is the last Hp columns
      for (int i = threadIdx.x; i < parts * kRows * Hp; i += kThreads) {
        const int part = i / (kRows * Hp), rest = i % (kRows * Hp);
        const int dest = rest / (kRows * hs), r = rest / hs % kRows, u = rest % hs;
        const bool is_dh = part == parts - 1;
        const float v = acc_s[g][r * Cfg::ldacc(g) + part * Hp + dest * hs + u];
        float* slot = block_smem<kCluster>(red_cur, dest) + (is_dh ? red_dh(g) : red_dx(g));
        slot[(rank * kRows + r) * hs + u] = v;
      }
    }
    cluster_barrier<kCluster>();  // every block's partial sums are in red_cur

    // 3. The cells of step t: sum the slots in rank order, then the cell's backward.
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int k_steps = s - (top - g), t = T_ - 1 - k_steps;
      if (g >= layers || k_steps < 0 || k_steps > T_) continue;
#pragma unroll
      for (int k = 0; k < kPairs; ++k) {
        if (!valid[k]) continue;
        const Cell<Cfg> pos(k);
        const int b = row0 + pos.r, unit = unit0 + pos.u;
        float dh_rec = 0.f;
        if (k_steps >= 1)
          for (int j = 0; j < kCluster; ++j) dh_rec += red_cur[red_dh(g) + (j * kRows + pos.r) * hs + pos.u];
        if (k_steps == T_) {  // past step 0: the sums are the gradient of h0, the carry that of c0
          static_cast<T*>(p.grad_h0[g])[int64_t(b) * H + unit] = from_float<T>(dh_rec);
          static_cast<T*>(p.grad_c0[g])[int64_t(b) * H + unit] = from_float<T>(dc[g][k]);
          continue;
        }
        const Saved& v = in[g][k];
        float dh = dh_rec;
        if (g == top) {
          dh += v.dy_or_keep;
        } else if constexpr (G > 1) {
          float dx = 0.f;
          for (int j = 0; j < kCluster; ++j) dx += red_cur[red_dx(g + 1) + (j * kRows + pos.r) * hs + pos.u];
          dh += dx * v.dy_or_keep;
        }
        if (t == T_ - 1) dh += load_float<T>(p.grad_h_n[g], int64_t(b) * H + unit);
        const auto r = cell::backward(v.gate[0], v.gate[1], v.gate[2], v.gate[3], v.c, v.c_prev, dh, dc[g][k]);
        dc[g][k] = r.dc_carry;
        const float d[4] = {r.d_i, r.d_f, r.d_g, r.d_o};
        T* out = static_cast<T*>(p.d_pre[g]) + (int64_t(t) * B + b) * 4 * H + unit;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const T dq = from_float<T>(d[q]);
          dpre_s[g][pos.r * Cfg::lddpre(hs) + q * hs + pos.u] = dq;
          out[q * H] = dq;
        }
      }
    }
    load_saved(s + 1);
    // dpre_s holds step t's gradients before the next products read them; red_cur is read before it is written
    // again (two iterations on, behind the next cluster barrier).
    __syncthreads();
  }
  // The last iteration's remote writes were behind its cluster barrier; none follow, so blocks may exit.
}

// --- launch ---------------------------------------------------------------------------------------------------------

// Launches one cluster of Cfg::kCluster blocks per kRows batch rows. The shared-memory opt-in and the capacity are
// the driver's answers from the first call per (kernel, device), which the plan's check makes (lstm.cu) before a
// CUDA graph could capture a launch; here they are looked up.
template <class Cfg, class Kernel, class Params>
void launch_clustered(Kernel kernel, size_t smem_bytes, int device, cudaStream_t stream, const Params& p) {
  TORCH_CHECK(cluster_capacity(reinterpret_cast<const void*>(kernel), Cfg::kCluster, kThreads, smem_bytes, device) > 0,
              "lstm_attn: GPU ", device, " cannot hold a cluster of ", Cfg::kCluster, " blocks with ", smem_bytes,
              " bytes of shared memory each; LSTM_ATTN_PLAN_CUDA_LSTM=stepwise runs the LSTM without it");
  const ClusterLaunch launch(ceil_div(p.B, kRows) * Cfg::kCluster, Cfg::kCluster, kThreads, smem_bytes, stream);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, p));
}

// The fewer clusters of the forward's and the backward's that fit on the device at once.
template <class Cfg>
int capacity(int device) {
  return std::min(
      cluster_capacity(reinterpret_cast<const void*>(lstm_fwd_kernel<Cfg>), Cfg::kCluster, kThreads, Cfg::kFwdBytes,
                       device),
      cluster_capacity(reinterpret_cast<const void*>(lstm_bwd_kernel<Cfg>), Cfg::kCluster, kThreads, Cfg::kBwdBytes,
                       device));
}

// Calls f with the bucket's Config for a path: WMMA for 16-bit and tf32, exact FFMA for float32.
template <int Hp, class F>
void with_config(Path path, F&& f) {
  switch (path) {
    case Path::kHalf:
      return f(Config<__half, WmmaMma<__half, kThreads>, Hp>{});
    case Path::kBFloat16:
      return f(Config<__nv_bfloat16, WmmaMma<__nv_bfloat16, kThreads>, Hp>{});
    case Path::kTf32:
      return f(Config<float, WmmaMma<float, kThreads>, Hp>{});
    case Path::kFloat:
      return f(Config<float, SimtMma<kThreads>, Hp>{});
  }
}

template <int Hp>
Shape fused_shape(Path path) {
  Shape shape{};
  with_config<Hp>(path, [&](auto cfg) {
    using Cfg = decltype(cfg);
    shape = Shape{Cfg::Hp, Cfg::kLayers, Cfg::hs, Cfg::kCluster, std::max(Cfg::kFwdBytes, Cfg::kBwdBytes)};
  });
  return shape;
}

template <int Hp>
int fused_capacity(Path path, int device) {
  int clusters = 0;
  with_config<Hp>(path, [&](auto cfg) { clusters = capacity<decltype(cfg)>(device); });
  return clusters;
}

template <int Hp>
void fused_forward(const FwdParams& p, Path path, int device, cudaStream_t stream) {
  with_config<Hp>(path, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch_clustered<Cfg>(lstm_fwd_kernel<Cfg>, Cfg::kFwdBytes, device, stream, p);
  });
}

template <int Hp>
void fused_backward(const BwdParams& p, Path path, int device, cudaStream_t stream) {
  with_config<Hp>(path, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch_clustered<Cfg>(lstm_bwd_kernel<Cfg>, Cfg::kBwdBytes, device, stream, p);
  });
}

}  // namespace lstm_attn::gpu::lstm
