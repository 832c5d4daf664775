// The CPU's elementwise steps of the gemm plan (attention_gemm.h), in ATen ops with the arithmetic of the CUDA steps:
// scores and dP in the accumulation dtype, probs and dS rounded once to the input dtype, the LayerNorm from attn as
// stored. They exist so that CI, without a GPU, runs the plan's orchestration, its saved tensors and its autograd
// against the reference; they are not tuned for speed.
#include "attention_gemm.h"

namespace lstm_attn::cpu {
namespace {

using at::Tensor;

at::ScalarType acc_of(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Tensor product_acc(const Tensor& a, const Tensor& b) {
  // ATen's bmm has no out_dtype on CPU: the operands are widened first, which gives the same products (every
  // 16-bit product is exact in float32) summed in float32.
  return at::bmm(a.to(acc_of(a)), b.to(acc_of(b)));
}

Tensor truncate_to_tf32(const Tensor& x) {
  // The 13 low mantissa bits cleared: what a Tensor Core reads of a float32 operand it is not told to round. An inf
  // stays inf, and a NaN stays NaN where its quiet bit is set (as in every NaN torch makes).
  return at::bitwise_and(x.contiguous().view(at::kInt), static_cast<int64_t>(static_cast<int32_t>(0xFFFFE000)))
      .view(at::kFloat);
}

Tensor product_tf32(const Tensor& a, const Tensor& b) {
  // A model of a TF32 product on a CPU: the operands as a Tensor Core reads them, exact float32 products, float32 sums.
  return at::bmm(truncate_to_tf32(a), truncate_to_tf32(b));
}

void softmax(const Tensor& scores, double scale, const Tensor& probs, const Tensor& lse) {
  const Tensor s = scores * scale;
  lse.copy_(at::logsumexp(s, -1));
  probs.copy_(at::exp(s - lse.unsqueeze(-1)));
}

void residual_layernorm(const Tensor& o, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps,
                        const Tensor& out, const Tensor& attn, const Tensor& mean, const Tensor& rstd) {
  const auto acc = acc_of(o);
  attn.copy_(o);
  const Tensor y = attn.to(acc) + residual.to(acc);
  const Tensor centred = y - y.mean(-1, /*keepdim=*/true);
  const Tensor r = at::rsqrt(centred.square().mean(-1, /*keepdim=*/true) + eps);
  mean.copy_(y.mean(-1));
  rstd.copy_(r.squeeze(-1));
  out.copy_(centred * r * weight.to(acc) + bias.to(acc));
}

void layernorm_bwd(const Tensor& grad_out, const Tensor& attn, const Tensor& residual, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& grad_residual, const Tensor& delta,
                   const Tensor& grad_weight, const Tensor& grad_bias) {
  const auto acc = acc_of(mean);
  const Tensor a = attn.to(acc), go = grad_out.to(acc), r = rstd.unsqueeze(-1);
  const Tensor xhat = (a + residual.to(acc) - mean.unsqueeze(-1)) * r;
  const Tensor g = go * weight.to(acc);
  grad_residual.copy_(r * (g - g.mean(-1, true) - xhat * (g * xhat).mean(-1, true)));
  delta.copy_((a * grad_residual.to(acc)).sum(-1));  // dO as stored: the operand the products use
  grad_weight.copy_((go * xhat).sum({0, 1}));
  grad_bias.copy_(go.sum({0, 1}));
}

void softmax_bwd(const Tensor& probs, const Tensor& dp, const Tensor& delta, double scale, const Tensor& ds) {
  ds.copy_(probs.to(dp.scalar_type()) * (dp - delta.unsqueeze(-1)) * scale);
}

}  // namespace

const GemmPlanSteps& gemm_plan_steps() {
  static const GemmPlanSteps steps{product_acc, product_tf32, softmax, residual_layernorm, layernorm_bwd,
                                         softmax_bwd};
  return steps;
}

}  // namespace lstm_attn::cpu
