// The CUDA kernels of lstm_attn::attention_layernorm_fwd / _bwd: input checks, then the plan the call names
// (checks.h; lstm_attn/plans.py chooses it): "gemm" runs csrc/attention_gemm.cpp with this device's steps
// (gemm/steps.cpp); "tiled" and "flash" allocate and dispatch to the smallest compiled head-dim bucket that holds H
// (tiled/{fwd,bwd}.cuh, flash/{fwd,bwd}.cuh).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention_gemm.h"
#include "checks.h"
#include "cuda_queries.h"
#include "kernel_limits.h"
#include "cuda/attention/flash/flash.cuh"
#include "cuda/attention/tiled/tiled.cuh"

namespace lstm_attn::gpu {
namespace {

int bucket_for(int64_t H) { return H <= 32 ? 32 : H <= 64 ? 64 : H <= 128 ? 128 : H <= 256 ? 256 : 512; }

// Calls f with the smallest compiled head-dim bucket >= H, up to kLargest (the plan's largest), as a
// std::integral_constant. LSTM_ATTN_HEAD_DIMS may leave buckets out of the build; a larger compiled bucket serves a
// smaller H (masking).
template <int kLargest, class F>
void with_head_dim_bucket(int64_t H, F&& f) {
#ifdef LSTM_ATTN_HDIM_32
  if (H <= 32) return f(std::integral_constant<int, 32>{});
#endif
#ifdef LSTM_ATTN_HDIM_64
  if (H <= 64) return f(std::integral_constant<int, 64>{});
#endif
#ifdef LSTM_ATTN_HDIM_128
  if (H <= 128) return f(std::integral_constant<int, 128>{});
#endif
#ifdef LSTM_ATTN_HDIM_256
  if constexpr (kLargest >= 256) {
    if (H <= 256) return f(std::integral_constant<int, 256>{});
  }
#endif
#ifdef LSTM_ATTN_HDIM_512
  if constexpr (kLargest >= 512) {
    if (H <= 512) return f(std::integral_constant<int, 512>{});
  }
#endif
  TORCH_CHECK(false, "lstm_attn: H = ", H, " needs the CUDA head-dim bucket ", bucket_for(H),
              " (or a larger one), which this build left out; rebuild with it in LSTM_ATTN_HEAD_DIMS");
}

void attention_fwd(const AttnFwdParams& p, Plan plan, MmaPath path, c10::ScalarType dtype, cudaStream_t stream) {
  if (plan == Plan::kFlash) {
    return with_head_dim_bucket<flash::kMaxHeadDim>(
        p.H, [&](auto bucket) { flash::fwd_bucket<decltype(bucket)::value>(p, dtype, stream); });
  }
  with_head_dim_bucket<kMaxHeadDim>(
      p.H, [&](auto bucket) { attention_fwd_bucket<decltype(bucket)::value>(p, path, stream); });
}

// The flash backward adds the key blocks' dQ shares into p.dq_accum, then scales and rounds it into p.grad_q.
void attention_bwd(const AttnBwdParams& p, Plan plan, MmaPath path, c10::ScalarType dtype, cudaStream_t stream) {
  if (plan == Plan::kFlash) {
    with_head_dim_bucket<flash::kMaxHeadDim>(
        p.H, [&](auto bucket) { flash::bwd_bucket<decltype(bucket)::value>(p, dtype, stream); });
    return flash::dq_convert(p.dq_accum, static_cast<int64_t>(p.B) * p.Tq * p.H, p.scale, p.grad_q, dtype, stream);
  }
  with_head_dim_bucket<kMaxHeadDim>(
      p.H, [&](auto bucket) { attention_bwd_bucket<decltype(bucket)::value>(p, path, stream); });
}

// What the flash kernels run, refused by name before anything is allocated.
void check_flash(const at::Tensor& q) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK((dtype == at::kHalf || dtype == at::kBFloat16) && q.size(2) <= flash::kMaxHeadDim,
              "plan 'flash' runs bfloat16 and float16 with H up to ", flash::kMaxHeadDim, "; q has dtype ", dtype,
              " and H = ", q.size(2));
}

// float32 runs on tensor cores (tf32) only where torch.backends.cuda.matmul.allow_tf32 allows it, as cuBLAS does.
MmaPath mma_path(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Half:
      return MmaPath::kHalf;
    case c10::ScalarType::BFloat16:
      return MmaPath::kBFloat16;
    default:
      return at::globalContext().allowTF32CuBLAS() ? MmaPath::kTf32 : MmaPath::kFloat;
  }
}

void check_cuda_limits(const at::Tensor& q, const at::Tensor& k) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "lstm_attn's CUDA kernels support float32, bfloat16 and float16; q has dtype ", dtype,
              dtype == at::kDouble ? " (float64 runs on the 'cpu' and 'reference' backends)" : "");
  TORCH_CHECK(q.size(2) <= kMaxHeadDim, "lstm_attn's CUDA kernels support H up to ", kMaxHeadDim,
              ", got H = ", q.size(2));
  // Tiles are at least 16 rows; one block per (batch, tile) in a 1-D grid; row indices are int with a tile of
  // headroom.
  const int64_t tiles = (std::max(q.size(1), k.size(1)) + 15) / 16;
  TORCH_CHECK(q.size(1) <= INT_MAX - 64 && k.size(1) <= INT_MAX - 64 && q.size(0) * tiles <= INT_MAX,
              "lstm_attn's CUDA kernels: q ", q.sizes(), " and k ", k.sizes(), " are too large for one launch");
}

void check_bias(const at::Tensor& bias, const at::Tensor& q) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == q.size(2), "bias has shape ", bias.sizes(), "; expected (H,) = (",
              q.size(2), ",)");
  check_same(bias, "bias", q, "q");
}

void check_like_q(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.sizes() == q.sizes(), name, " has shape ", t.sizes(), "; expected the shape of q, ", q.sizes());
  check_same(t, name, q, "q");
}

at::Tensor row_stats(const at::Tensor& q) { return at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat)); }

// The plan a call names, refused by name before anything runs where it cannot take q (flash: 16-bit, H <= 128;
// gemm3xtf32: float32, and a build with cuBLAS).
Plan cuda_plan(std::string_view name, const at::Tensor& q) {
  const Plan plan = parse_plan(name);
  if (plan == Plan::kFlash) check_flash(q);
  check_gemm3xtf32(plan, q);
  if (plan == Plan::kGemm3xTf32) check_tf32_products();
  return plan;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_layernorm_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& residual_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, double eps, double scale, std::string_view plan_name) {
  check_attention_layernorm_inputs(q_in, k_in, v_in, residual_in, weight_in);
  check_bias(bias_in, q_in);
  check_cuda_limits(q_in, k_in);
  const Plan plan = cuda_plan(plan_name, q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor residual = residual_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  if (is_gemm(plan)) {
    return attention_gemm_fwd(gemm_plan_steps(), q, k, v, residual, weight, bias, eps, scale,
                              plan == Plan::kGemm3xTf32);
  }

  at::Tensor out = at::empty(q.sizes(), q.options()), attn = at::empty(q.sizes(), q.options());
  at::Tensor lse = row_stats(q), mean = row_stats(q), rstd = row_stats(q), no_probs = at::empty({0}, q.options());
  if (q.size(0) == 0) return {out, attn, lse, mean, rstd, no_probs};

  AttnFwdParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.residual = residual.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias.data_ptr();
  p.out = out.data_ptr();
  p.attn = attn.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.B = static_cast<int>(q.size(0));
  p.Tq = static_cast<int>(q.size(1));
  p.Tk = static_cast<int>(k.size(1));
  p.H = static_cast<int>(q.size(2));
  p.scale = static_cast<float>(scale);
  p.eps = static_cast<float>(eps);
  p.vec = rows_16b_aligned(p.H, q.element_size(), {p.q, p.k, p.v});
  attention_fwd(p, plan, mma_path(q.scalar_type()), q.scalar_type(), c10::cuda::getCurrentCUDAStream());
  return {out, attn, lse, mean, rstd, no_probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_layernorm_bwd_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& residual_in, const at::Tensor& weight_in, const at::Tensor& attn_in, const at::Tensor& lse_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const at::Tensor& probs, double scale,
    std::string_view plan_name) {
  check_attention_layernorm_inputs(q_in, k_in, v_in, residual_in, weight_in);
  check_like_q(grad_out_in, "grad_out", q_in);
  check_like_q(attn_in, "attn", q_in);
  check_row_stats(lse_in, "lse", q_in);
  check_row_stats(mean_in, "mean", q_in);
  check_row_stats(rstd_in, "rstd", q_in);
  check_cuda_limits(q_in, k_in);
  const Plan plan = cuda_plan(plan_name, q_in);
  if (is_gemm(plan)) check_probs(probs, q_in, k_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous();
  const at::Tensor v = v_in.contiguous(), residual = residual_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor attn = attn_in.contiguous(), lse = lse_in.contiguous(), mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  if (is_gemm(plan)) {
    return attention_gemm_bwd(gemm_plan_steps(), grad_out, q, k, v, residual, weight, attn, mean, rstd,
                              probs.contiguous(), scale, plan == Plan::kGemm3xTf32);
  }

  at::Tensor grad_q = at::empty(q.sizes(), q.options()), grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options()), grad_residual = at::empty(q.sizes(), q.options());
  if (q.size(0) == 0) {  // no rows: the parameter gradients are empty sums
    return {grad_q, grad_k, grad_v, grad_residual, at::zeros_like(weight), at::zeros_like(weight)};
  }
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  at::Tensor grad_bias = at::empty(weight.sizes(), weight.options());
  const int H = static_cast<int>(q.size(2));
  const c10::ScalarType dtype = q.scalar_type();
  at::Tensor delta = row_stats(q);
  // The LayerNorm backward is every plan's first step; the gemm plan's steps hold this device's.
  gemm_plan_steps().layernorm_bwd(grad_out, attn, residual, weight, mean, rstd, grad_residual, delta, grad_weight,
                                  grad_bias);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AttnBwdParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.grad_attn = grad_residual.data_ptr();  // dO = dy = grad_residual
  p.lse = lse.data_ptr<float>();
  p.delta = delta.data_ptr<float>();
  p.grad_q = grad_q.data_ptr();
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  p.B = static_cast<int>(q.size(0));
  p.Tq = static_cast<int>(q.size(1));
  p.Tk = static_cast<int>(k.size(1));
  p.H = H;
  p.scale = static_cast<float>(scale);
  p.vec = rows_16b_aligned(H, q.element_size(), {p.q, p.k, p.v, p.grad_attn});
  at::Tensor dq_accum, dq_order;  // the flash plan's ordered dQ sum (flash.cuh)
  if (plan == Plan::kFlash) {
    dq_accum = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
    dq_order = at::zeros({flash::dq_order_ints(p.B, p.Tq)}, q.options().dtype(at::kInt));
    p.dq_accum = dq_accum.data_ptr<float>();
    p.dq_order = dq_order.data_ptr<int>();
  }
  attention_bwd(p, plan, mma_path(dtype), dtype, stream);
  return {grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias};
}

template <class Tl>
void add_rows(std::vector<int64_t>& rows) {
  rows.push_back(Tl::BM);
  rows.push_back(Tl::BN);
}

// The query and key rows per tile (BM, BN) of every kernel `plan` runs for (dtype, H), distinct and sorted; none for
// "gemm", which has no tiles of its own. Read from the same traits the launches use, so that the tests' parity grid
// follows the tiles wherever they move.
std::vector<int64_t> attention_tiles(std::string_view plan_name, int64_t H, c10::ScalarType dtype) {
  const Plan plan = parse_plan(plan_name);
  TORCH_CHECK(H >= 1 && H <= kMaxHeadDim, "H must be in [1, ", kMaxHeadDim, "], got ", H);
  std::vector<int64_t> rows;
  if (plan == Plan::kFlash) {
    add_rows<flash::FwdTiles>(rows);
    add_rows<flash::BwdTiles>(rows);
  } else if (plan == Plan::kTiled) {
    const bool wide = dtype == at::kFloat;
    TORCH_CHECK(wide || dtype == at::kHalf || dtype == at::kBFloat16,
                "dtype must be float32, float16 or bfloat16, got ", dtype);
    with_head_dim_bucket<kMaxHeadDim>(H, [&](auto bucket) {
      constexpr int HB = decltype(bucket)::value;
      auto add = [&](auto tiles) {
        using T = decltype(tiles);
        add_rows<typename T::Fwd>(rows);
        add_rows<typename T::DkDv>(rows);
        add_rows<typename T::Dq>(rows);
      };
      if (wide) {
        add(Tiles<HB, 4>{});
      } else {
        add(Tiles<HB, 2>{});
      }
    });
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

// The answer to ops.cpp's cuda_attention_tiles, given when the library loads.
const bool kTilesQueryRegistered = (cuda_queries().attention_tiles = &attention_tiles, true);

}  // namespace
}  // namespace lstm_attn::gpu

TORCH_LIBRARY_IMPL(lstm_attn, CUDA, m) {
  m.impl("attention_layernorm_fwd", &lstm_attn::gpu::attention_layernorm_fwd_cuda);
  m.impl("attention_layernorm_bwd", &lstm_attn::gpu::attention_layernorm_bwd_cuda);
}
