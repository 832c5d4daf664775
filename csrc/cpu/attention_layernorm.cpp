// CPU kernels of lstm_attn::attention_layernorm_fwd/_bwd: out = LayerNorm(softmax(q k^T * scale) v + residual).
//
// Both directions work one batch at a time, with the operands that must be transposed for the GEMMs (K^T, Q^T,
// dO^T; cpu_utils.h's GEMM is plain row-major) staged once per task in per-thread scratch: the only full-size
// memory traffic is the inputs and outputs themselves (and float copies of bfloat16/float16 q, k, v), and every
// product is a small GEMM on cache-sized tiles.
//
// Forward: a task is one batch (or a group of its query blocks when the batches are fewer than the threads).
// For each block of query rows the keys are visited in tiles: S = Q K^T, an online-softmax update, O += P V, so
// no more than one tile of scores ever exists. Residual add and LayerNorm finish the rows while they are in cache.
//
// Backward: recomputes P from q, k and the saved log-sum-exp. A task is a (batch, key chunk): the LayerNorm
// backward of the batch's rows gives dO and delta = rowsum(attn * dO); then for each key tile, the query blocks
// in order: S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T, dS^T, dK += dS^T Q, dQ^T += K^T dS^T (computing the
// tiles transposed makes every product row-major). Keys are split into chunks only when there are few batches;
// the chunks' shares of dQ are then summed in chunk order. The split depends on the shape alone, never on the
// thread count, and every sum has a fixed order: gradients are bitwise reproducible from run to run and across
// thread counts.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "attention_gemm.h"
#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/tiles.h"

namespace lstm_attn::cpu {
namespace {

using at::Tensor;

// How many rows ahead the LayerNorm backward prefetches its inputs.
constexpr int64_t kPrefetchRows = 4;

// ---------------------------------------------------------------------------------------------------- forward

// Online softmax over an (m x n) tile of raw scores, in place: S becomes exp(scale * S - new_row_max), the
// running row max/sum are updated, and rescale[r] = exp(old_row_max - new_row_max) is what row r's partial
// output must be multiplied by.
template <typename acc_t>
LSTM_ATTN_MULTIVERSION void online_softmax_tile(acc_t* __restrict__ s, int64_t m, int64_t n, acc_t scale,
                                                acc_t* __restrict__ row_max, acc_t* __restrict__ row_sum,
                                                acc_t* __restrict__ rescale) {
  for (int64_t r = 0; r < m; ++r) {
    acc_t* sr = s + r * n;
    for (int64_t j = 0; j < n; ++j) sr[j] *= scale;
    const acc_t new_max = std::max(cpu::row_max(n, sr), row_max[r]);
    const acc_t tile_sum = lane_sum<acc_t>(n, [&](int64_t j) { return sr[j] = softmax_exp(sr[j] - new_max); });
    rescale[r] = softmax_exp(row_max[r] - new_max);
    row_sum[r] = row_sum[r] * rescale[r] + tile_sum;
    row_max[r] = new_max;
  }
}

template <typename acc_t>
void scale_rows(acc_t* o, int64_t m, int64_t H, const acc_t* factor) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t h = 0; h < H; ++h) o[r * H + h] *= factor[r];
}

// Attention of m query rows (q, m x H) over all Tk keys of one batch (kt = K^T, H x Tk; v, Tk x H), a key tile
// at a time. o receives sum_j exp(s_ij - row_max_i) v_j, not yet divided by row_sum. s holds one score tile and
// rescale m values.
template <typename acc_t>
void attend_rows(const acc_t* q, int64_t m, const acc_t* kt, const acc_t* v, int64_t Tk, int64_t H, acc_t scale,
                 acc_t* o, acc_t* row_max, acc_t* row_sum, acc_t* s, acc_t* rescale) {
  std::fill(row_max, row_max + m, -std::numeric_limits<acc_t>::infinity());
  std::fill(row_sum, row_sum + m, acc_t(0));
  for (int64_t j0 = 0; j0 < Tk; j0 += kKeyTile) {
    const int64_t n = std::min(kKeyTile, Tk - j0);
    gemm(m, n, H, q, H, kt + j0, Tk, s, n, /*accumulate=*/false);
    online_softmax_tile(s, m, n, scale, row_max, row_sum, rescale);
    if (j0 > 0) scale_rows(o, m, H, rescale);
    gemm(m, H, n, s, n, v + j0 * H, H, o, H, /*accumulate=*/j0 > 0);
  }
}

// Finishes m query rows: attn = o / row_sum, y = attn + residual, out = LayerNorm(y), and the row statistics.
// o is overwritten with y.
template <typename scalar_t, typename acc_t>
LSTM_ATTN_MULTIVERSION void layernorm_epilogue(acc_t* __restrict__ o, int64_t m, int64_t H,
                                               const acc_t* __restrict__ row_max, const acc_t* __restrict__ row_sum,
                                               const scalar_t* __restrict__ residual, const acc_t* __restrict__ weight,
                                               const acc_t* __restrict__ bias, acc_t eps, scalar_t* __restrict__ out,
                                               scalar_t* __restrict__ attn, row_stat_t<acc_t>* __restrict__ lse,
                                               row_stat_t<acc_t>* __restrict__ mean,
                                               row_stat_t<acc_t>* __restrict__ rstd) {
  using stat_t = row_stat_t<acc_t>;
  for (int64_t r = 0; r < m; ++r) {
    acc_t* y = o + r * H;
    const scalar_t* res = residual + r * H;
    scalar_t* attn_r = attn + r * H;
    scalar_t* out_r = out + r * H;
    const acc_t inv_sum = acc_t(1) / row_sum[r];
    // y is formed from the stored (rounded) attn, exactly as the backward forms it: for small H the LayerNorm
    // amplifies any difference between the two by rstd.
    for (int64_t h = 0; h < H; ++h) attn_r[h] = static_cast<scalar_t>(y[h] * inv_sum);
    for (int64_t h = 0; h < H; ++h) y[h] = static_cast<acc_t>(attn_r[h]) + static_cast<acc_t>(res[h]);
    const acc_t mu = lane_sum<acc_t>(H, [&](int64_t h) { return y[h]; }) / H;
    const acc_t var = lane_sum<acc_t>(H, [&](int64_t h) { return (y[h] - mu) * (y[h] - mu); }) / H;
    const acc_t rs = acc_t(1) / std::sqrt(var + eps);
    for (int64_t h = 0; h < H; ++h) out_r[h] = static_cast<scalar_t>((y[h] - mu) * rs * weight[h] + bias[h]);
    lse[r] = static_cast<stat_t>(row_max[r] + std::log(row_sum[r]));
    mean[r] = static_cast<stat_t>(mu);
    rstd[r] = static_cast<stat_t>(rs);
  }
}

template <typename scalar_t>
std::vector<Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& residual,
                            const Tensor& weight, const Tensor& bias, double eps, double scale) {
  using acc_t = acc_type<scalar_t>;
  using stat_t = row_stat_t<acc_t>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), H = q.size(2);
  Tensor out = at::empty_like(q), attn = at::empty_like(q);
  std::vector<Tensor> stats;
  for (int i = 0; i < 3; ++i)
    stats.push_back(at::empty({B, Tq}, q.options().dtype(c10::CppTypeToScalarType<stat_t>::value)));
  if (B == 0) return {out, attn, stats[0], stats[1], stats[2]};

  // No-ops for float32/float64; bfloat16/float16 are widened once so that the GEMMs run on float.
  const Tensor q_acc = q.to(acc_dtype), k_acc = k.to(acc_dtype), v_acc = v.to(acc_dtype);
  const Tensor w_acc = weight.to(acc_dtype), b_acc = bias.to(acc_dtype);
  const acc_t* qp = q_acc.const_data_ptr<acc_t>();
  const acc_t* kp = k_acc.const_data_ptr<acc_t>();
  const acc_t* vp = v_acc.const_data_ptr<acc_t>();
  const scalar_t* resp = residual.const_data_ptr<scalar_t>();
  scalar_t* outp = out.mutable_data_ptr<scalar_t>();
  scalar_t* attnp = attn.mutable_data_ptr<scalar_t>();
  stat_t* lsep = stats[0].mutable_data_ptr<stat_t>();
  stat_t* meanp = stats[1].mutable_data_ptr<stat_t>();
  stat_t* rstdp = stats[2].mutable_data_ptr<stat_t>();

  // Query rows are independent, so how they are grouped into tasks changes no result and may follow the thread
  // count: whole batches when there are enough of them (K^T staged once per batch), smaller groups otherwise.
  const int64_t q_blocks = ceil_div(Tq, kQueryBlock);
  const int64_t blocks_per_task = ceil_div(q_blocks, std::min(q_blocks, ceil_div(2 * at::get_num_threads(), B)));
  const int64_t tasks_per_batch = ceil_div(q_blocks, blocks_per_task);
  at::parallel_for(0, B * tasks_per_batch, 1, [&](int64_t begin, int64_t end) {
    auto kt = scratch<acc_t>(H * Tk);
    auto o = scratch<acc_t>(kQueryBlock * H);
    auto s = scratch<acc_t>(kQueryBlock * std::min(kKeyTile, Tk));
    auto row = scratch<acc_t>(3 * kQueryBlock);
    acc_t *row_max = row.get(), *row_sum = row_max + kQueryBlock, *rescale = row_sum + kQueryBlock;
    int64_t staged_batch = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_batch;
      if (b != staged_batch) {
        transpose(kp + b * Tk * H, Tk, H, H, kt.get(), Tk);
        staged_batch = b;
      }
      const int64_t first_block = (task % tasks_per_batch) * blocks_per_task;
      for (int64_t blk = first_block; blk < std::min(first_block + blocks_per_task, q_blocks); ++blk) {
        const int64_t i0 = blk * kQueryBlock, m = std::min(kQueryBlock, Tq - i0);
        const int64_t row0 = b * Tq + i0;
        // The epilogue's residual rows and the next block's query rows load while the GEMMs run.
        prefetch(resp + row0 * H, m * H);
        if (i0 + m < Tq) prefetch(qp + (row0 + m) * H, std::min(kQueryBlock, Tq - i0 - m) * H);
        attend_rows(qp + row0 * H, m, kt.get(), vp + b * Tk * H, Tk, H, static_cast<acc_t>(scale), o.get(), row_max,
                    row_sum, s.get(), rescale);
        layernorm_epilogue(o.get(), m, H, row_max, row_sum, resp + row0 * H, w_acc.const_data_ptr<acc_t>(),
                           b_acc.const_data_ptr<acc_t>(), static_cast<acc_t>(eps), outp + row0 * H,
                           attnp + row0 * H, lsep + row0, meanp + row0, rstdp + row0);
      }
    }
  });
  return {out, attn, stats[0], stats[1], stats[2]};
}

// --------------------------------------------------------------------------------------------------- backward

// LayerNorm backward of m rows: dy = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad_out * weight.
// Writes dy in acc_t to d_out (the attention output's gradient) and delta = rowsum(attn * dy); unless null,
// writes dy to grad_residual and adds grad_out * xhat and grad_out into gw, gb. xhat and g (H each) are scratch:
// g is stored before use so that no FMA contraction makes g - mean(g) differ from zero where the exact value is
// zero (H = 1, which rstd = 1/sqrt(eps) would amplify).
template <typename scalar_t, typename acc_t>
LSTM_ATTN_MULTIVERSION void layernorm_bwd_rows(int64_t m, int64_t H, const scalar_t* __restrict__ grad_out,
                                               const scalar_t* __restrict__ attn, const scalar_t* __restrict__ residual,
                                               const acc_t* __restrict__ weight,
                                               const row_stat_t<acc_t>* __restrict__ mean,
                                               const row_stat_t<acc_t>* __restrict__ rstd, acc_t* __restrict__ xhat,
                                               acc_t* __restrict__ g, scalar_t* __restrict__ grad_residual,
                                               acc_t* __restrict__ d_out, acc_t* __restrict__ delta,
                                               acc_t* __restrict__ gw, acc_t* __restrict__ gb) {
  for (int64_t r = 0; r < m; ++r) {
    if (r + kPrefetchRows < m) {
      prefetch(grad_out + (r + kPrefetchRows) * H, H);
      prefetch(attn + (r + kPrefetchRows) * H, H);
      prefetch(residual + (r + kPrefetchRows) * H, H);
    }
    const scalar_t* go = grad_out + r * H;
    const scalar_t* a = attn + r * H;
    const scalar_t* res = residual + r * H;
    const acc_t mu = static_cast<acc_t>(mean[r]), rs = static_cast<acc_t>(rstd[r]);
    for (int64_t h = 0; h < H; ++h) {
      xhat[h] = (static_cast<acc_t>(a[h]) + static_cast<acc_t>(res[h]) - mu) * rs;
      g[h] = static_cast<acc_t>(go[h]) * weight[h];
    }
    const acc_t mean_g = lane_sum<acc_t>(H, [&](int64_t h) { return g[h]; }) / H;
    const acc_t mean_gx = lane_sum<acc_t>(H, [&](int64_t h) { return g[h] * xhat[h]; }) / H;
    acc_t* dy = d_out + r * H;
    for (int64_t h = 0; h < H; ++h) dy[h] = rs * (g[h] - mean_g - xhat[h] * mean_gx);
    delta[r] = lane_sum<acc_t>(H, [&](int64_t h) { return static_cast<acc_t>(a[h]) * dy[h]; });
    if (grad_residual == nullptr) continue;
    for (int64_t h = 0; h < H; ++h) {
      grad_residual[r * H + h] = static_cast<scalar_t>(dy[h]);
      gw[h] += static_cast<acc_t>(go[h]) * xhat[h];
      gb[h] += static_cast<acc_t>(go[h]);
    }
  }
}

// Transposed probabilities of an (n keys x m queries) tile, in place: P^T = exp(scale * S^T - lse[query]).
template <typename acc_t>
LSTM_ATTN_MULTIVERSION void probabilities_t(acc_t* __restrict__ st, int64_t n, int64_t m, acc_t scale,
                                            const row_stat_t<acc_t>* __restrict__ lse) {
  for (int64_t r = 0; r < n; ++r) {
    acc_t* sr = st + r * m;
    for (int64_t c = 0; c < m; ++c) sr[c] = softmax_exp(sr[c] * scale - static_cast<acc_t>(lse[c]));
  }
}

// Transposed score gradients, in place of dP^T: dS^T = scale * P^T * (dP^T - delta[query]). The softmax scale
// is folded in here so that dK and dQ come out of their GEMMs finished.
template <typename acc_t>
LSTM_ATTN_MULTIVERSION void score_grads_t(const acc_t* __restrict__ pt, acc_t* __restrict__ dpt, int64_t n,
                                          int64_t m, acc_t scale, const acc_t* __restrict__ delta) {
  for (int64_t r = 0; r < n; ++r) {
    const acc_t* pr = pt + r * m;
    acc_t* dr = dpt + r * m;
    for (int64_t c = 0; c < m; ++c) dr[c] = scale * pr[c] * (dr[c] - delta[c]);
  }
}

template <typename acc_t, typename scalar_t>
void store_rows(const acc_t* src, int64_t count, scalar_t* dst) {
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

template <typename scalar_t>
std::vector<Tensor> backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& residual, const Tensor& weight, const Tensor& attn, const Tensor& lse,
                             const Tensor& mean, const Tensor& rstd, double scale_d) {
  using acc_t = acc_type<scalar_t>;
  using stat_t = row_stat_t<acc_t>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), H = q.size(2);
  const acc_t scale = static_cast<acc_t>(scale_d);
  Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  Tensor grad_residual = at::empty_like(residual);
  if (B == 0) return {grad_q, grad_k, grad_v, grad_residual, at::zeros_like(weight), at::zeros_like(weight)};

  const Tensor q_acc = q.to(acc_dtype), k_acc = k.to(acc_dtype), v_acc = v.to(acc_dtype);
  const Tensor w_acc = weight.to(acc_dtype);
  const int64_t key_tiles = ceil_div(Tk, kKeyTile);
  const int64_t chunk_keys = ceil_div(key_tiles, std::min(key_tiles, ceil_div(kMinBackwardTasks, B))) * kKeyTile;
  const int64_t n_chunks = ceil_div(Tk, chunk_keys);
  // Per-batch shares of grad_weight/grad_bias; with several key chunks, each chunk's share of dQ^T.
  Tensor gw_parts = at::zeros({B, H}, w_acc.options()), gb_parts = at::zeros({B, H}, w_acc.options());
  Tensor dq_t_parts = at::empty({n_chunks > 1 ? n_chunks * B * H * Tq : 0}, w_acc.options());

  const acc_t* qp = q_acc.const_data_ptr<acc_t>();
  const acc_t* kp = k_acc.const_data_ptr<acc_t>();
  const acc_t* vp = v_acc.const_data_ptr<acc_t>();
  const stat_t* lsep = lse.const_data_ptr<stat_t>();
  acc_t* dq_t_partp = dq_t_parts.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * n_chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t tile_keys = std::min(kKeyTile, Tk), tile_queries = std::min(kBackwardQueryBlock, Tq);
    auto d_out = scratch<acc_t>(Tq * H), d_out_t = scratch<acc_t>(H * Tq), q_t = scratch<acc_t>(H * Tq);
    auto k_t = scratch<acc_t>(H * std::min(chunk_keys, Tk));
    auto dq_t_own = scratch<acc_t>(n_chunks > 1 ? 0 : H * Tq);
    auto delta = scratch<acc_t>(Tq), ln = scratch<acc_t>(2 * H);
    auto st = scratch<acc_t>(tile_keys * tile_queries), dpt = scratch<acc_t>(tile_keys * tile_queries);
    // dK, dV of one key tile accumulate in cache over the query blocks; the outputs are written once.
    auto dk = scratch<acc_t>(tile_keys * H), dv = scratch<acc_t>(tile_keys * H);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, chunk = task % n_chunks;
      const int64_t c0 = chunk * chunk_keys, c1 = std::min(c0 + chunk_keys, Tk);
      const acc_t* q_b = qp + b * Tq * H;
      prefetch(vp + (b * Tk + c0) * H, std::min(kKeyTile, c1 - c0) * H);  // first read after the LayerNorm below
      // Every chunk of a batch needs the batch's dO and delta; the first one also writes its other outputs.
      const bool first_chunk = chunk == 0;
      layernorm_bwd_rows(Tq, H, grad_out.const_data_ptr<scalar_t>() + b * Tq * H,
                         attn.const_data_ptr<scalar_t>() + b * Tq * H, residual.const_data_ptr<scalar_t>() + b * Tq * H,
                         w_acc.const_data_ptr<acc_t>(), mean.const_data_ptr<stat_t>() + b * Tq,
                         rstd.const_data_ptr<stat_t>() + b * Tq, ln.get(), ln.get() + H,
                         first_chunk ? grad_residual.mutable_data_ptr<scalar_t>() + b * Tq * H : nullptr, d_out.get(),
                         delta.get(), gw_parts.mutable_data_ptr<acc_t>() + b * H,
                         gb_parts.mutable_data_ptr<acc_t>() + b * H);
      transpose(d_out.get(), Tq, H, H, d_out_t.get(), Tq);
      transpose(q_b, Tq, H, H, q_t.get(), Tq);
      transpose(kp + (b * Tk + c0) * H, c1 - c0, H, H, k_t.get(), c1 - c0);
      acc_t* dq_t = n_chunks > 1 ? dq_t_partp + (chunk * B + b) * H * Tq : dq_t_own.get();
      for (int64_t j0 = c0; j0 < c1; j0 += kKeyTile) {
        const int64_t n = std::min(kKeyTile, c1 - j0);
        const acc_t* k_j = kp + (b * Tk + j0) * H;
        const acc_t* v_j = vp + (b * Tk + j0) * H;
        for (int64_t i0 = 0; i0 < Tq; i0 += kBackwardQueryBlock) {
          const int64_t m = std::min(kBackwardQueryBlock, Tq - i0);
          const bool first_block = i0 == 0;
          gemm(n, m, H, k_j, H, q_t.get() + i0, Tq, st.get(), m, false);  // S^T
          probabilities_t(st.get(), n, m, scale, lsep + b * Tq + i0);    // P^T
          gemm(n, H, m, st.get(), m, d_out.get() + i0 * H, H, dv.get(), H, !first_block);
          gemm(n, m, H, v_j, H, d_out_t.get() + i0, Tq, dpt.get(), m, false);  // dP^T
          score_grads_t(st.get(), dpt.get(), n, m, scale, delta.get() + i0);   // dS^T
          gemm(n, H, m, dpt.get(), m, q_b + i0 * H, H, dk.get(), H, !first_block);
          gemm(H, m, n, k_t.get() + (j0 - c0), c1 - c0, dpt.get(), m, dq_t + i0, Tq, /*accumulate=*/j0 > c0);
        }
        store_rows(dk.get(), n * H, grad_k.mutable_data_ptr<scalar_t>() + (b * Tk + j0) * H);
        store_rows(dv.get(), n * H, grad_v.mutable_data_ptr<scalar_t>() + (b * Tk + j0) * H);
      }
      if (n_chunks == 1) transpose(dq_t, H, Tq, Tq, grad_q.mutable_data_ptr<scalar_t>() + b * Tq * H, H);
    }
  });
  if (n_chunks > 1) {
    // dQ = the chunks' shares, summed in chunk order into the first one, transposed back.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        acc_t* total = dq_t_partp + b * H * Tq;
        for (int64_t chunk = 1; chunk < n_chunks; ++chunk) {
          const acc_t* part = dq_t_partp + (chunk * B + b) * H * Tq;
          for (int64_t i = 0; i < H * Tq; ++i) total[i] += part[i];
        }
        transpose(total, H, Tq, Tq, grad_q.mutable_data_ptr<scalar_t>() + b * Tq * H, H);
      }
    });
  }

  // grad_weight, grad_bias: the batches' shares added in batch order.
  Tensor grad_weight = at::zeros({H}, w_acc.options()), grad_bias = at::zeros({H}, w_acc.options());
  acc_t* gw = grad_weight.mutable_data_ptr<acc_t>();
  acc_t* gb = grad_bias.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      gw[h] += gw_parts.const_data_ptr<acc_t>()[b * H + h];
      gb[h] += gb_parts.const_data_ptr<acc_t>()[b * H + h];
    }
  return {grad_q, grad_k, grad_v, grad_residual, grad_weight.to(weight.scalar_type()),
          grad_bias.to(weight.scalar_type())};
}

// ------------------------------------------------------------------------------------------------ entry points

void check_bias(const Tensor& bias, const Tensor& q) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == q.size(2), "bias has shape ", bias.sizes(), "; expected (H,) = (",
              q.size(2), ",)");
  check_same(bias, "bias", q, "q");
}

// The CPU runs three plans: "tiled" (the kernels above), "gemm" and "gemm3xtf32" (attention_gemm.h, with the steps
// of attention_gemm_steps.cpp); the others, and gemm3xtf32 on anything but float32, are refused by name.
Plan cpu_plan(std::string_view plan, const Tensor& q) {
  const Plan p = parse_plan(plan);
  TORCH_CHECK(p != Plan::kFlash, "plan 'flash' is a CUDA plan; the CPU runs 'tiled', 'gemm' and 'gemm3xtf32'");
  check_gemm3xtf32(p, q);
  return p;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> attention_layernorm_fwd(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& residual, const Tensor& weight,
    const Tensor& bias, double eps, double scale, std::string_view plan) {
  check_attention_layernorm_inputs(q, k, v, residual, weight);
  check_bias(bias, q);
  const Plan p = cpu_plan(plan, q);
  if (is_gemm(p)) {
    return attention_gemm_fwd(gemm_plan_steps(), q.contiguous(), k.contiguous(), v.contiguous(),
                              residual.contiguous(), weight.contiguous(), bias.contiguous(), eps, scale,
                              p == Plan::kGemm3xTf32);
  }
  std::vector<Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attention_layernorm_fwd_cpu", [&] {
    r = forward<scalar_t>(q.contiguous(), k.contiguous(), v.contiguous(), residual.contiguous(), weight.contiguous(),
                          bias.contiguous(), eps, scale);
  });
  return {r[0], r[1], r[2], r[3], r[4], at::empty({0}, q.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> attention_layernorm_bwd(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& residual,
    const Tensor& weight, const Tensor& attn, const Tensor& lse, const Tensor& mean, const Tensor& rstd,
    const Tensor& probs, double scale, std::string_view plan) {
  check_attention_layernorm_inputs(q, k, v, residual, weight);
  TORCH_CHECK(grad_out.sizes() == q.sizes(), "grad_out has shape ", grad_out.sizes(), "; expected the shape of q, ",
              q.sizes());
  check_same(grad_out, "grad_out", q, "q");
  TORCH_CHECK(attn.sizes() == q.sizes(), "attn has shape ", attn.sizes(), "; expected the shape of q, ", q.sizes());
  check_same(attn, "attn", q, "q");
  check_row_stats(lse, "lse", q);
  check_row_stats(mean, "mean", q);
  check_row_stats(rstd, "rstd", q);
  const Plan p = cpu_plan(plan, q);
  if (is_gemm(p)) {
    check_probs(probs, q, k);
    return attention_gemm_bwd(gemm_plan_steps(), grad_out.contiguous(), q.contiguous(), k.contiguous(),
                              v.contiguous(), residual.contiguous(), weight.contiguous(), attn.contiguous(),
                              mean.contiguous(), rstd.contiguous(), probs.contiguous(), scale,
                              p == Plan::kGemm3xTf32);
  }
  std::vector<Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attention_layernorm_bwd_cpu", [&] {
    r = backward<scalar_t>(grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
                           residual.contiguous(), weight.contiguous(), attn.contiguous(), lse.contiguous(),
                           mean.contiguous(), rstd.contiguous(), scale);
  });
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace
}  // namespace lstm_attn::cpu

TORCH_LIBRARY_IMPL(lstm_attn, CPU, m) {
  m.impl("attention_layernorm_fwd", &lstm_attn::cpu::attention_layernorm_fwd);
  m.impl("attention_layernorm_bwd", &lstm_attn::cpu::attention_layernorm_bwd);
}
