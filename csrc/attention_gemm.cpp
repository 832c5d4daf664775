// The gemm plan's orchestration, the same on every device (design: attention_gemm.h).
#include "attention_gemm.h"

namespace lstm_attn {
namespace {

at::ScalarType accumulation_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor row_stats(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(1)}, q.options().dtype(accumulation_dtype(q)));
}

// The products of one pass: the device's own (torch's precision flags), or each split into three TF32 products.
struct Products {
  const GemmPlanSteps& steps;
  bool split_tf32;

  // a @ b in the accumulation dtype (scores and dP).
  at::Tensor acc(const at::Tensor& a, const at::Tensor& b) const {
    return split_tf32 ? split(a, b) : steps.product_acc(a, b);
  }
  // a @ b in the input dtype (the gradients of q, k and v).
  at::Tensor same(const at::Tensor& a, const at::Tensor& b) const { return split_tf32 ? split(a, b) : at::bmm(a, b); }

 private:
  at::Tensor split(const at::Tensor& a, const at::Tensor& b) const {
    const at::Tensor a_hi = round_to_tf32(a), b_hi = round_to_tf32(b);
    // x - x_hi is exact; where x is inf or NaN, x_hi carries it and the lo part is 0 rather than a new NaN.
    const at::Tensor a_lo = (a - a_hi).nan_to_num_(0.0), b_lo = (b - b_hi).nan_to_num_(0.0);
    // The small terms first, so that their sum is not rounded against the large one's magnitude twice.
    return steps.product_tf32(a_hi, b_lo).add_(steps.product_tf32(a_lo, b_hi)).add_(steps.product_tf32(a_hi, b_hi));
  }
};

}  // namespace

at::Tensor round_to_tf32(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "round_to_tf32 takes float32, got ", x.scalar_type());
  // Add half of the 13 dropped mantissa bits' range to the magnitude, then clear them: round to nearest, ties away
  // (a carry into the exponent is the correct rounding, up to inf past TF32's largest value). Non-finite values are
  // zeroed first so that the integer add cannot overflow, and put back after.
  const at::Tensor finite = at::isfinite(x);
  const at::Tensor bits = at::where(finite, x, 0.0f).view(at::kInt);
  const at::Tensor rounded = at::bitwise_and(bits + 0x1000, static_cast<int64_t>(static_cast<int32_t>(0xFFFFE000)));
  return at::where(finite, rounded.view(at::kFloat), x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_fwd(
    const GemmPlanSteps& steps, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps, double scale,
    bool split_tf32) {
  const Products products{steps, split_tf32};
  at::Tensor probs = at::empty({q.size(0), q.size(1), k.size(1)}, q.options()), lse = row_stats(q);
  // The scores die here, before O is allocated: the pass holds at most one accumulation-dtype (B, Tq, Tk) tensor.
  steps.softmax(products.acc(q, k.transpose(1, 2)), scale, probs, lse);
  at::Tensor out = at::empty_like(q), attn = at::empty_like(q), mean = row_stats(q), rstd = row_stats(q);
  steps.residual_layernorm(products.acc(probs, v), residual, weight, bias, eps, out, attn, mean, rstd);
  return {out, attn, lse, mean, rstd, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_bwd(
    const GemmPlanSteps& steps, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& attn,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& probs, double scale, bool split_tf32) {
  const Products products{steps, split_tf32};
  at::Tensor grad_residual = at::empty_like(q), delta = row_stats(q);
  at::Tensor grad_weight = at::empty_like(weight), grad_bias = at::empty_like(weight);
  steps.layernorm_bwd(grad_out, attn, residual, weight, mean, rstd, grad_residual, delta, grad_weight, grad_bias);
  const at::Tensor& d_o = grad_residual;  // the residual's gradient is the attention output's
  at::Tensor ds = at::empty_like(probs);
  steps.softmax_bwd(probs, products.acc(d_o, v.transpose(1, 2)), delta, scale, ds);
  at::Tensor grad_v = products.same(probs.transpose(1, 2), d_o);
  at::Tensor grad_q = products.same(ds, k);
  at::Tensor grad_k = products.same(ds.transpose(1, 2), q);
  return {grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias};
}

}  // namespace lstm_attn
