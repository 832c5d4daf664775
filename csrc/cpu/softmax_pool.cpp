// CPU kernels of lstm_attn::softmax_pool_fwd/_bwd: pooled = sum_t softmax_t(x_t . u + c) x_t per batch row.
//
// Memory-bound: x is read from memory once per direction (the backward also writes grad_x once). One task per
// batch row. The forward walks x in blocks of kTimeBlock rows: the block's scores, one online-softmax rescale of
// the running weighted sum, then the block's rows are added while they are still in L1. The backward recomputes
// the probabilities from the saved log-sum-exp and visits the row twice, the second time from cache.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace lstm_attn::cpu {
namespace {

using at::Tensor;

constexpr int64_t kTimeBlock = 64;

template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE acc_t dot(int64_t H, const scalar_t* x, const acc_t* y) {
  return lane_sum<acc_t>(H, [&](int64_t h) { return static_cast<acc_t>(x[h]) * y[h]; });
}

// One batch row: x (T x H), u (H), c. acc (H) and s (kTimeBlock) are scratch.
template <typename scalar_t, typename acc_t>
LSTM_ATTN_MULTIVERSION void pool_row(const scalar_t* __restrict__ x, int64_t T, int64_t H,
                                     const acc_t* __restrict__ u, acc_t c, acc_t* __restrict__ acc,
                                     acc_t* __restrict__ s, scalar_t* __restrict__ pooled,
                                     row_stat_t<acc_t>* __restrict__ lse) {
  acc_t row_max = -std::numeric_limits<acc_t>::infinity(), row_sum = 0;
  std::fill(acc, acc + H, acc_t(0));
  for (int64_t t0 = 0; t0 < T; t0 += kTimeBlock) {
    const int64_t n = std::min(kTimeBlock, T - t0);
    const scalar_t* xb = x + t0 * H;
    for (int64_t t = 0; t < n; ++t) s[t] = dot(H, xb + t * H, u) + c;
    const acc_t new_max = std::max(cpu::row_max(n, s), row_max);
    const acc_t rescale = softmax_exp(row_max - new_max);
    for (int64_t t = 0; t < n; ++t) s[t] = softmax_exp(s[t] - new_max);
    row_sum = row_sum * rescale + lane_sum<acc_t>(n, [&](int64_t t) { return s[t]; });
    row_max = new_max;
    if (t0 > 0)
      for (int64_t h = 0; h < H; ++h) acc[h] *= rescale;
    for (int64_t t = 0; t < n; ++t) {
      const scalar_t* xt = xb + t * H;
      for (int64_t h = 0; h < H; ++h) acc[h] += s[t] * static_cast<acc_t>(xt[h]);
    }
  }
  const acc_t inv_sum = acc_t(1) / row_sum;
  for (int64_t h = 0; h < H; ++h) pooled[h] = static_cast<scalar_t>(acc[h] * inv_sum);
  *lse = static_cast<row_stat_t<acc_t>>(row_max + std::log(row_sum));
}

// One batch row of the backward: p_t = exp(x_t . u + c - lse), ds_t = p_t (g . x_t - delta),
// grad_x_t = p_t g + ds_t u, grad_u = sum_t ds_t x_t, grad_c = sum_t ds_t. delta is g . pooled, taken as
// sum_t p_t (g . x_t) from the same p_t rather than from the stored pooled: rounded to bf16/fp16, pooled would
// leave its rounding error in grad_c and grad_u, whose exact values cancel to (near) zero. So x_t is visited
// twice, the second time from cache. u and g in acc_t; p and gx (T each) are scratch; gu (H) receives grad_u.
template <typename scalar_t, typename acc_t>
LSTM_ATTN_MULTIVERSION void pool_row_bwd(const scalar_t* __restrict__ x, int64_t T, int64_t H,
                                         const acc_t* __restrict__ u, acc_t c, const acc_t* __restrict__ g, acc_t lse,
                                         acc_t* __restrict__ p, acc_t* __restrict__ gx,
                                         scalar_t* __restrict__ grad_x, acc_t* __restrict__ gu,
                                         acc_t* __restrict__ grad_c) {
  for (int64_t t = 0; t < T; ++t) {
    p[t] = softmax_exp(dot(H, x + t * H, u) + c - lse);
    gx[t] = dot(H, x + t * H, g);
  }
  const acc_t delta = lane_sum<acc_t>(T, [&](int64_t t) { return p[t] * gx[t]; });
  std::fill(gu, gu + H, acc_t(0));
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* xt = x + t * H;
    const acc_t ds = p[t] * (gx[t] - delta);
    scalar_t* gxt = grad_x + t * H;
    for (int64_t h = 0; h < H; ++h) {
      gxt[h] = static_cast<scalar_t>(p[t] * g[h] + ds * u[h]);
      gu[h] += ds * static_cast<acc_t>(xt[h]);
    }
    gx[t] = ds;
  }
  *grad_c = lane_sum<acc_t>(T, [&](int64_t t) { return gx[t]; });
}

template <typename scalar_t>
std::vector<Tensor> forward(const Tensor& x, const Tensor& u, const Tensor& c) {
  using acc_t = acc_type<scalar_t>;
  using stat_t = row_stat_t<acc_t>;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  Tensor pooled = at::empty({B, H}, x.options());
  Tensor lse = at::empty({B}, x.options().dtype(c10::CppTypeToScalarType<stat_t>::value));
  if (B == 0) return {pooled, lse};
  const Tensor u_acc = u.to(c10::CppTypeToScalarType<acc_t>::value);
  const Tensor c_acc = c.to(c10::CppTypeToScalarType<acc_t>::value);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    auto acc = scratch<acc_t>(H);
    auto s = scratch<acc_t>(kTimeBlock);
    for (int64_t b = b0; b < b1; ++b)
      pool_row(x.const_data_ptr<scalar_t>() + b * T * H, T, H, u_acc.const_data_ptr<acc_t>() + b * H,
               c_acc.const_data_ptr<acc_t>()[b], acc.get(), s.get(), pooled.mutable_data_ptr<scalar_t>() + b * H,
               lse.mutable_data_ptr<stat_t>() + b);
  });
  return {pooled, lse};
}

template <typename scalar_t>
std::vector<Tensor> backward(const Tensor& grad_pooled, const Tensor& x, const Tensor& u, const Tensor& c,
                             const Tensor& lse) {
  using acc_t = acc_type<scalar_t>;
  using stat_t = row_stat_t<acc_t>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  Tensor grad_x = at::empty_like(x);
  Tensor grad_u = at::empty({B, H}, x.options().dtype(acc_dtype));
  Tensor grad_c = at::empty({B}, x.options().dtype(acc_dtype));
  if (B > 0) {
    const Tensor u_acc = u.to(acc_dtype), c_acc = c.to(acc_dtype), g_acc = grad_pooled.to(acc_dtype);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      auto p = scratch<acc_t>(T), gx = scratch<acc_t>(T);
      for (int64_t b = b0; b < b1; ++b)
        pool_row_bwd(x.const_data_ptr<scalar_t>() + b * T * H, T, H, u_acc.const_data_ptr<acc_t>() + b * H,
                     c_acc.const_data_ptr<acc_t>()[b], g_acc.const_data_ptr<acc_t>() + b * H,
                     static_cast<acc_t>(lse.const_data_ptr<stat_t>()[b]), p.get(), gx.get(),
                     grad_x.mutable_data_ptr<scalar_t>() + b * T * H, grad_u.mutable_data_ptr<acc_t>() + b * H,
                     grad_c.mutable_data_ptr<acc_t>() + b);
    });
  }
  return {grad_x, grad_u.to(x.scalar_type()), grad_c.to(x.scalar_type())};
}

std::tuple<Tensor, Tensor> softmax_pool_fwd(const Tensor& x, const Tensor& u, const Tensor& c) {
  check_softmax_pool_inputs(x, u, c);
  std::vector<Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "softmax_pool_fwd_cpu", [&] {
    r = forward<scalar_t>(x.contiguous(), u.contiguous(), c.contiguous());
  });
  return {r[0], r[1]};
}

std::tuple<Tensor, Tensor, Tensor> softmax_pool_bwd(const Tensor& grad_pooled, const Tensor& x, const Tensor& u,
                                                    const Tensor& c, const Tensor& pooled, const Tensor& lse) {
  check_softmax_pool_inputs(x, u, c);
  TORCH_CHECK(grad_pooled.sizes() == u.sizes(), "grad_pooled has shape ", grad_pooled.sizes(),
              "; expected (B, H) = ", u.sizes());
  check_same(grad_pooled, "grad_pooled", x, "x");
  // pooled is in the schema for every backend; this kernel takes g . pooled from x instead (see pool_row_bwd).
  TORCH_CHECK(pooled.sizes() == u.sizes(), "pooled has shape ", pooled.sizes(), "; expected (B, H) = ", u.sizes());
  check_same(pooled, "pooled", x, "x");
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == x.size(0), "lse has shape ", lse.sizes(), "; expected (B,) = (",
              x.size(0), ",)");
  TORCH_CHECK(lse.scalar_type() == row_stat_dtype(x.scalar_type()), "lse must be ", row_stat_dtype(x.scalar_type()),
              ", got ", lse.scalar_type());
  TORCH_CHECK(lse.device() == x.device(), "lse is on ", lse.device(), " but x is on ", x.device());
  std::vector<Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "softmax_pool_bwd_cpu", [&] {
    r = backward<scalar_t>(grad_pooled.contiguous(), x.contiguous(), u.contiguous(), c.contiguous(),
                           lse.contiguous());
  });
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace lstm_attn::cpu

TORCH_LIBRARY_IMPL(lstm_attn, CPU, m) {
  m.impl("softmax_pool_fwd", &lstm_attn::cpu::softmax_pool_fwd);
  m.impl("softmax_pool_bwd", &lstm_attn::cpu::softmax_pool_bwd);
}
