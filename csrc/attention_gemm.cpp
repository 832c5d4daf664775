// The gemm plan's orchestration, the same on every device (design: attention_gemm.h).
#include "attention_gemm.h"

namespace lstm_attn {
namespace {

at::ScalarType accumulation_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor row_stats(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(1)}, q.options().dtype(accumulation_dtype(q)));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_fwd(
    const GemmPlanSteps& steps, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps, double scale) {
  at::Tensor probs = at::empty({q.size(0), q.size(1), k.size(1)}, q.options()), lse = row_stats(q);
  // The scores die here, before O is allocated: the pass holds at most one accumulation-dtype (B, Tq, Tk) tensor.
  steps.softmax(steps.product_acc(q, k.transpose(1, 2)), scale, probs, lse);
  at::Tensor out = at::empty_like(q), attn = at::empty_like(q), mean = row_stats(q), rstd = row_stats(q);
  steps.residual_layernorm(steps.product_acc(probs, v), residual, weight, bias, eps, out, attn, mean, rstd);
  return {out, attn, lse, mean, rstd, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_bwd(
    const GemmPlanSteps& steps, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& attn,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& probs, double scale) {
  at::Tensor grad_residual = at::empty_like(q), delta = row_stats(q);
  at::Tensor grad_weight = at::empty_like(weight), grad_bias = at::empty_like(weight);
  steps.layernorm_bwd(grad_out, attn, residual, weight, mean, rstd, grad_residual, delta, grad_weight, grad_bias);
  const at::Tensor& d_o = grad_residual;  // the residual's gradient is the attention output's
  at::Tensor ds = at::empty_like(probs);
  steps.softmax_bwd(probs, steps.product_acc(d_o, v.transpose(1, 2)), delta, scale, ds);
  at::Tensor grad_v = at::bmm(probs.transpose(1, 2), d_o);
  at::Tensor grad_q = at::bmm(ds, k);
  at::Tensor grad_k = at::bmm(ds.transpose(1, 2), q);
  return {grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias};
}

}  // namespace lstm_attn
