// The flash plan's forward kernel and its per-bucket launcher (design: flash.cuh).
#pragma once

#include "cuda/attention/flash/flash.cuh"

namespace lstm_attn::gpu::flash {

template <int HB>
struct FwdSmem {
  using Tl = FwdTiles;
  using QTile = Swizzled<Tl::BM, HB>;
  using KvTile = Swizzled<Tl::BN, HB>;
  // Q, then kStages x (K, V): element offsets and the total in bytes (16-bit elements).
  static constexpr int kQ = 0, kK = QTile::kElems, kV = kK + Tl::kStages * KvTile::kElems;
  static constexpr size_t kBytes = 2 * static_cast<size_t>(kV + Tl::kStages * KvTile::kElems);
};

template <class T, int HB>
__global__ void __launch_bounds__(kThreads, 2) flash_fwd_kernel(const AttnFwdParams p) {
  using Tl = FwdTiles;
  using L = FwdSmem<HB>;
  constexpr int BM = Tl::BM, BN = Tl::BN, kStages = Tl::kStages;
  constexpr int kSteps = HB / 16;       // k-steps of S = Q K^T
  constexpr int kSBlocks = BN / 8;      // n-blocks of S
  constexpr int kOBlocks = HB / 8;      // n-blocks of O
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  T* smem = reinterpret_cast<T*>(smem_bytes);
  T* s_q = smem + L::kQ;

  const int H = p.H, q_tiles = ceil_div(p.Tq, BM), k_tiles = ceil_div(p.Tk, BN);
  const int b = blockIdx.x / q_tiles, q0 = blockIdx.x % q_tiles * BM;
  const int q_rows = min(BM, p.Tq - q0);
  const int64_t row0 = static_cast<int64_t>(b) * p.Tq + q0;  // first global (b, t) row of this tile
  const T* k = static_cast<const T*>(p.k) + static_cast<int64_t>(b) * p.Tk * H;
  const T* v = static_cast<const T*>(p.v) + static_cast<int64_t>(b) * p.Tk * H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // Key tile `tile` into stage tile % kStages; a group is committed even past the last tile, so that the wait below
  // counts the same number of groups in every iteration.
  const auto load_kv = [&](int tile) {
    if (tile < k_tiles) {
      const int stage = tile % kStages, k0 = tile * BN, rows = min(BN, p.Tk - k0);
      load_tile<BN, HB>(smem + L::kK + stage * L::KvTile::kElems, k + static_cast<int64_t>(k0) * H, rows, H, p.vec);
      load_tile<BN, HB>(smem + L::kV + stage * L::KvTile::kElems, v + static_cast<int64_t>(k0) * H, rows, H, p.vec);
    }
    cp_async_commit();
  };
  load_tile<BM, HB>(s_q, static_cast<const T*>(p.q) + row0 * H, q_rows, H, p.vec);  // in tile 0's group
  for (int tile = 0; tile < kStages - 1; ++tile) load_kv(tile);

  uint32_t qf[kSteps][4];  // this warp's 16 rows of Q as A fragments, loaded once
  Acc<kOBlocks> o;
#pragma unroll
  for (int j = 0; j < kOBlocks; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  // Rows g and g + 8 of the warp's 16: running maximum (log2 units: scores * scale * log2 e) and this lane's share
  // of the running sum (its columns only; the quad's shares are added once, at the end).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const float scale_log2 = p.scale * kLog2e;

  for (int tile = 0; tile < k_tiles; ++tile) {
    cp_async_wait<kStages - 2>();  // this thread's copies of tile `tile` (and Q) have landed
    __syncthreads();               // everyone's have; and every warp is done with tile - 1, whose stage is reused next
    load_kv(tile + kStages - 1);
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk)
        ldmatrix_x4(qf[kk], s_q + L::QTile::offset(warp * 16 + lane % 16, kk * 16 + lane / 16 * 8));
    }
    const T* s_k = smem + L::kK + tile % kStages * L::KvTile::kElems;
    const T* s_v = smem + L::kV + tile % kStages * L::KvTile::kElems;

    Acc<kSBlocks> s;
#pragma unroll
    for (int j = 0; j < kSBlocks; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk)
#pragma unroll
      for (int j = 0; j < kSBlocks; j += 2) {  // two n-blocks (16 keys) per ldmatrix
        uint32_t kf[4];
        ldmatrix_x4(kf, s_k + L::KvTile::offset(j * 8 + lane % 8 + lane / 16 * 8, kk * 16 + lane / 8 % 2 * 8));
        mma_two_blocks<T>(s[j], s[j + 1], qf[kk], kf);
      }

    // Scores to log2 units; keys past Tk (only in the last tile) to -inf, after scaling, whatever the scale's sign.
    const int keys_left = p.Tk - tile * BN;
#pragma unroll
    for (int j = 0; j < kSBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] *= scale_log2;
        if (j * 8 + 2 * t + e % 2 >= keys_left) s[j][e] = -INFINITY;
      }
    // Online softmax for rows g (elements 0, 1) and g + 8 (elements 2, 3).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSBlocks; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      const float new_max = fmaxf(row_max[r], quad_max(tile_max));
      const float alpha = exp2f(row_max[r] - new_max);  // 0 on the first tile, where row_max is -inf
      float tile_sum = 0.f;
#pragma unroll
      for (int j = 0; j < kSBlocks; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - new_max);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - new_max);
        tile_sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + tile_sum;
      row_max[r] = new_max;
#pragma unroll
      for (int j = 0; j < kOBlocks; ++j) {
        o[j][2 * r] *= alpha;
        o[j][2 * r + 1] *= alpha;
      }
    }

    // O += P V: P's A fragments are S's accumulators, rounded to T; V's B fragments by ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pf[4];
      a_from_acc<T>(pf, s, kk);
#pragma unroll
      for (int j = 0; j < kOBlocks; j += 2) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, s_v + L::KvTile::offset(kk * 16 + lane % 8 + lane / 8 % 2 * 8, j * 8 + lane / 16 * 8));
        mma_two_blocks<T>(o[j], o[j + 1], pf, vf);
      }
    }
  }
  cp_async_wait<0>();  // no copy may be in flight when the block exits

  // Epilogue, rows g and g + 8 of this warp, each spread over its quad (lane t holds columns 8j + 2t, 8j + 2t + 1):
  // attn = O / l; y = attn + residual; out = LayerNorm(y). Every lane runs the shuffles; only real rows store.
  const T* residual = static_cast<const T*>(p.residual);
  const T* weight = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* attn = static_cast<T*>(p.attn);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + g + 8 * r;
    const bool real = row < q_rows;
    const int64_t grow = (row0 + row) * H;
    const float sum = quad_sum(row_sum[r]), inv_sum = 1.f / sum;
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kOBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int h = j * 8 + 2 * t + e;
        float& y = o[j][2 * r + e];
        if (real && h < H) {
          const T a = from_float<T>(y * inv_sum);
          attn[grow + h] = a;
          // y from attn as stored, with a plain add, as layernorm_row.cuh explains.
          y = __fadd_rn(to_float(a), to_float(residual[grow + h]));
          total += y;
        }
      }
    const float mean = quad_sum(total) / H;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < kOBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e)
        if (j * 8 + 2 * t + e < H) sq += (o[j][2 * r + e] - mean) * (o[j][2 * r + e] - mean);
    const float rstd = rsqrtf(quad_sum(sq) / H + p.eps);
    if (!real) continue;
#pragma unroll
    for (int j = 0; j < kOBlocks; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int h = j * 8 + 2 * t + e;
        if (h < H) {
          out[grow + h] = from_float<T>((o[j][2 * r + e] - mean) * rstd * to_float(weight[h]) + to_float(bias[h]));
        }
      }
    if (t == 0) {
      p.lse[row0 + row] = (row_max[r] + log2f(sum)) * kLn2;
      p.mean[row0 + row] = mean;
      p.rstd[row0 + row] = rstd;
    }
  }
}

template <int HB>
void fwd_bucket(const AttnFwdParams& p, c10::ScalarType dtype, cudaStream_t stream) {
  const int grid = p.B * ceil_div(p.Tq, FwdTiles::BM);
  if (dtype == c10::ScalarType::Half) {
    launch(flash_fwd_kernel<__half, HB>, grid, kThreads, FwdSmem<HB>::kBytes, stream, p);
  } else {
    launch(flash_fwd_kernel<__nv_bfloat16, HB>, grid, kThreads, FwdSmem<HB>::kBytes, stream, p);
  }
}

}  // namespace lstm_attn::gpu::flash
