// The flash plan's backward kernel (dK, dV and the key blocks' ordered shares of dQ) and its per-bucket launcher
// (design: flash.cuh). The LayerNorm backward has already turned grad_out into dO and computed delta.
#pragma once

#include "cuda/attention/flash/flash.cuh"

namespace lstm_attn::gpu::flash {

template <int HB>
struct BwdSmem {
  using Tl = BwdTiles;
  using KvTile = Swizzled<Tl::BN, HB>;
  using QTile = Swizzled<Tl::BM, HB>;
  using DsTile = Swizzled<Tl::BN, Tl::BM>;  // dS^T: keys x queries
  // K, V, then kStages x (Q, dO), then dS^T (16-bit element offsets); then kStages x (lse, delta) as floats.
  static constexpr int kK = 0, kV = KvTile::kElems, kQ = 2 * KvTile::kElems;
  static constexpr int kDo = kQ + Tl::kStages * QTile::kElems;
  static constexpr int kDs = kDo + Tl::kStages * QTile::kElems;
  static constexpr size_t kStatsByte = 2 * static_cast<size_t>(kDs + DsTile::kElems);  // a multiple of 16
  static constexpr size_t kBytes = kStatsByte + Tl::kStages * 2 * Tl::BM * sizeof(float);
};

template <class T, int HB>
__global__ void __launch_bounds__(kThreads, 2) flash_bwd_kernel(const AttnBwdParams p) {
  using Tl = BwdTiles;
  using L = BwdSmem<HB>;
  constexpr int BM = Tl::BM, BN = Tl::BN, kStages = Tl::kStages;
  constexpr int kSteps = HB / 16;     // k-steps of S^T = K Q^T and dP^T = V dO^T
  constexpr int kSBlocks = BM / 8;    // n-blocks of S^T (queries)
  constexpr int kHBlocks = HB / 8;    // n-blocks of dK, dV
  constexpr int kDqBlocks = HB / 16;  // n-blocks of a warp's dQ quarter (16 rows x HB / 2)
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  T* smem = reinterpret_cast<T*>(smem_bytes);
  const T* s_k = smem + L::kK;
  const T* s_v = smem + L::kV;
  T* s_ds = smem + L::kDs;
  float* s_stats = reinterpret_cast<float*>(smem_bytes + L::kStatsByte);  // stage s: lse at 2 s BM, delta after

  const int H = p.H, k_tiles = ceil_div(p.Tk, BN), q_tiles = ceil_div(p.Tq, BM);
  // The block's (batch, key block) comes from a ticket taken as it starts, not from blockIdx: key block n waits
  // below for key block n - 1, which then holds an earlier ticket, so it has started and will finish. Blocks need
  // not start in index order (MPS, preemption and the sanitizers reorder them), and a wait on one that has not
  // started could hang.
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(p.dq_order, 1);
  __syncthreads();
  const int b = ticket / k_tiles, n = ticket % k_tiles, k0 = n * BN;
  const int k_rows = min(BN, p.Tk - k0);
  const int64_t k_row0 = static_cast<int64_t>(b) * p.Tk + k0, q_row0 = static_cast<int64_t>(b) * p.Tq;
  const T* q = static_cast<const T*>(p.q) + q_row0 * H;
  const T* d_o = static_cast<const T*>(p.grad_attn) + q_row0 * H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // Query tile `tile` (Q, dO, lse, delta) into stage tile % kStages; always commits, as in the forward.
  const auto load_q = [&](int tile) {
    if (tile < q_tiles) {
      const int stage = tile % kStages, first = tile * BM, rows = min(BM, p.Tq - first);
      load_tile<BM, HB>(smem + L::kQ + stage * L::QTile::kElems, q + static_cast<int64_t>(first) * H, rows, H, p.vec);
      load_tile<BM, HB>(smem + L::kDo + stage * L::QTile::kElems, d_o + static_cast<int64_t>(first) * H, rows, H,
                        p.vec);
      float* stats = s_stats + stage * 2 * BM;
      for (int r = threadIdx.x; r < BM; r += kThreads) {
        const int64_t row = q_row0 + first + min(r, rows - 1);  // an address inside the tensor even when not read
        cp_async_4(stats + r, p.lse + row, r < rows ? 4 : 0);
        cp_async_4(stats + BM + r, p.delta + row, r < rows ? 4 : 0);
      }
    }
    cp_async_commit();
  };
  load_tile<BN, HB>(smem + L::kK, static_cast<const T*>(p.k) + k_row0 * H, k_rows, H, p.vec);  // in tile 0's group
  load_tile<BN, HB>(smem + L::kV, static_cast<const T*>(p.v) + k_row0 * H, k_rows, H, p.vec);
  for (int tile = 0; tile < kStages - 1; ++tile) load_q(tile);

  Acc<kHBlocks> dk, dv;
#pragma unroll
  for (int j = 0; j < kHBlocks; ++j) dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = dv[j][0] = dv[j][1] = dv[j][2] =
      dv[j][3] = 0.f;
  const float scale_log2 = p.scale * kLog2e;
  // This warp's keys are rows 16 warp + g and + 8 of the block's; past Tk their probabilities are 0.
  const bool key_real[2] = {warp * 16 + g < k_rows, warp * 16 + g + 8 < k_rows};
  // The dQ quarter this warp adds: rows dq_m0.. of the query tile, columns dq_n0.. of H.
  const int dq_m0 = warp % 2 * 16, dq_n0 = warp / 2 * (HB / 2);

  for (int tile = 0; tile < q_tiles; ++tile) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile's copies visible; every warp done with tile - 1 (its stage and the dS^T tile)
    load_q(tile + kStages - 1);
    const int stage = tile % kStages, first = tile * BM, q_rows = min(BM, p.Tq - first);
    const T* s_q = smem + L::kQ + stage * L::QTile::kElems;
    const T* s_do = smem + L::kDo + stage * L::QTile::kElems;
    const float* s_lse = s_stats + stage * 2 * BM;
    const float* s_delta = s_lse + BM;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys: A from K / V rows, B from Q / dO rows (no transpose).
    Acc<kSBlocks> s, dp;
#pragma unroll
    for (int j = 0; j < kSBlocks; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = dp[j][0] = dp[j][1] = dp[j][2] =
        dp[j][3] = 0.f;
    // Not unrolled: the accumulators are indexed by j alone, and unrolling kk would hoist every k-step's swizzled
    // ldmatrix addresses into registers (ptxas then spilled at HB = 128).
#pragma unroll 1
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t kf[4], vf[4];
      ldmatrix_x4(kf, s_k + L::KvTile::offset(warp * 16 + lane % 16, kk * 16 + lane / 16 * 8));
      ldmatrix_x4(vf, s_v + L::KvTile::offset(warp * 16 + lane % 16, kk * 16 + lane / 16 * 8));
#pragma unroll
      for (int j = 0; j < kSBlocks; j += 2) {
        uint32_t qf[4], of[4];
        const int row = j * 8 + lane % 8 + lane / 16 * 8, col = kk * 16 + lane / 8 % 2 * 8;
        ldmatrix_x4(qf, s_q + L::QTile::offset(row, col));
        ldmatrix_x4(of, s_do + L::QTile::offset(row, col));
        mma_two_blocks<T>(s[j], s[j + 1], kf, qf);
        mma_two_blocks<T>(dp[j], dp[j + 1], vf, of);
      }
    }
    // P^T = exp(S^T scale - lse) and dS^T = P^T (dP^T - delta), columns indexed by query; 0 outside the tensor.
#pragma unroll
    for (int j = 0; j < kSBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j * 8 + 2 * t + e % 2;
        const bool real = key_real[e / 2] && col < q_rows;
        const float pr = real ? exp2f(s[j][e] * scale_log2 - s_lse[col] * kLog2e) : 0.f;
        s[j][e] = pr;
        dp[j][e] = pr * (dp[j][e] - s_delta[col]);
      }
    // dV += P^T dO and dK += dS^T Q, with P^T, dS^T as A fragments (k = queries), dO and Q by ldmatrix.trans.
    // dS^T also goes to shared memory, for the block's dQ.
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t pf[4], df[4];
      a_from_acc<T>(pf, s, kk);
      a_from_acc<T>(df, dp, kk);
      // df's registers are (key g | g + 8, queries 16 kk + 2t | + 8): 32-bit stores into dS^T's rows.
      const int key = warp * 16 + g, query = kk * 16 + 2 * t;
      *reinterpret_cast<uint32_t*>(s_ds + L::DsTile::offset(key, query)) = df[0];
      *reinterpret_cast<uint32_t*>(s_ds + L::DsTile::offset(key + 8, query)) = df[1];
      *reinterpret_cast<uint32_t*>(s_ds + L::DsTile::offset(key, query + 8)) = df[2];
      *reinterpret_cast<uint32_t*>(s_ds + L::DsTile::offset(key + 8, query + 8)) = df[3];
#pragma unroll
      for (int j = 0; j < kHBlocks; j += 2) {
        uint32_t of[4], qf[4];
        const int row = kk * 16 + lane % 8 + lane / 8 % 2 * 8, col = j * 8 + lane / 16 * 8;
        ldmatrix_x4_trans(of, s_do + L::QTile::offset(row, col));
        ldmatrix_x4_trans(qf, s_q + L::QTile::offset(row, col));
        mma_two_blocks<T>(dv[j], dv[j + 1], pf, of);
        mma_two_blocks<T>(dk[j], dk[j + 1], df, qf);
      }
    }
    __syncthreads();  // dS^T complete

    // This warp's quarter of the tile's dQ share: dQ[dq_m0.., dq_n0..] = dS K over the block's BN keys, with dS's A
    // fragments by ldmatrix.trans of dS^T and K's B fragments by ldmatrix.trans of K.
    Acc<kDqBlocks> dq;
#pragma unroll
    for (int j = 0; j < kDqBlocks; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
#pragma unroll 1  // as for S^T above
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t af[4];
      ldmatrix_x4_trans(af, s_ds + L::DsTile::offset(kk * 16 + lane % 8 + lane / 16 * 8, dq_m0 + lane / 8 % 2 * 8));
#pragma unroll
      for (int j = 0; j < kDqBlocks; j += 2) {
        uint32_t kf[4];
        ldmatrix_x4_trans(kf, s_k + L::KvTile::offset(kk * 16 + lane % 8 + lane / 8 % 2 * 8,
                                                      dq_n0 + j * 8 + lane / 16 * 8));
        mma_two_blocks<T>(dq[j], dq[j + 1], af, kf);
      }
    }
    // Added after key block n - 1's share and before n + 1's: the same order on every run.
    int* lock = p.dq_order + 1 + (static_cast<int64_t>(b) * q_tiles + tile) * Tl::kDqParts + warp;
    if (lane == 0) {
      while (load_acquire(lock) != n) {
      }
    }
    __syncwarp();
    float* dq_rows = p.dq_accum + (q_row0 + first) * H;
#pragma unroll
    for (int j = 0; j < kDqBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = dq_m0 + g + 8 * (e / 2), col = dq_n0 + j * 8 + 2 * t + e % 2;
        if (row < q_rows && col < H) red_add(dq_rows + static_cast<int64_t>(row) * H + col, dq[j][e]);
      }
    __threadfence();  // each lane's additions are visible at gpu scope before the counter says they are done
    __syncwarp();
    if (lane == 0) add_release(lock, 1);
  }
  cp_async_wait<0>();

  // dK (times scale) and dV of this warp's 16 keys.
  T* grad_k = static_cast<T*>(p.grad_k) + k_row0 * H;
  T* grad_v = static_cast<T*>(p.grad_v) + k_row0 * H;
#pragma unroll
  for (int j = 0; j < kHBlocks; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = warp * 16 + g + 8 * (e / 2), h = j * 8 + 2 * t + e % 2;
      if (key < k_rows && h < H) {
        grad_k[static_cast<int64_t>(key) * H + h] = from_float<T>(dk[j][e] * p.scale);
        grad_v[static_cast<int64_t>(key) * H + h] = from_float<T>(dv[j][e]);
      }
    }
}

template <int HB>
void bwd_bucket(const AttnBwdParams& p, c10::ScalarType dtype, cudaStream_t stream) {
  const int grid = p.B * ceil_div(p.Tk, BwdTiles::BN);
  if (dtype == c10::ScalarType::Half) {
    launch(flash_bwd_kernel<__half, HB>, grid, kThreads, BwdSmem<HB>::kBytes, stream, p);
  } else {
    launch(flash_bwd_kernel<__nv_bfloat16, HB>, grid, kThreads, BwdSmem<HB>::kBytes, stream, p);
  }
}

}  // namespace lstm_attn::gpu::flash
