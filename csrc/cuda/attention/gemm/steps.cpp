// The CUDA steps of the gemm plan (csrc/attention_gemm.h): the products through ATen's bmm, which is cuBLAS under
// torch's matmul precision flags, and the fused kernels of kernels.cu between them. Host code only: it is compiled by
// the host compiler, which keeps ATen's headers out of nvcc.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "attention_gemm.h"
#include "cuda/attention/attention_layernorm.cuh"
#include "cuda/attention/gemm/kernels.cuh"

namespace lstm_attn::gpu {
namespace {

using at::Tensor;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
int64_t rows_of(const Tensor& t) { return t.size(0) * t.size(1); }

Tensor product_acc(const Tensor& a, const Tensor& b) {
  // 16-bit operands, float32 result: cuBLAS accumulates in float32 and writes it without rounding to 16 bits.
  return a.scalar_type() == at::kFloat ? at::bmm(a, b) : at::bmm(a, b, at::kFloat);
}

void softmax(const Tensor& scores, double scale, const Tensor& probs, const Tensor& lse) {
  gemm_softmax(scores.data_ptr<float>(), rows_of(scores), static_cast<int>(scores.size(2)), static_cast<float>(scale),
               probs.data_ptr(), lse.data_ptr<float>(), probs.scalar_type(), stream());
}

void residual_layernorm(const Tensor& o, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps,
                        const Tensor& out, const Tensor& attn, const Tensor& mean, const Tensor& rstd) {
  gemm_residual_layernorm(o.data_ptr<float>(), residual.data_ptr(), weight.data_ptr(), bias.data_ptr(), rows_of(o),
                          static_cast<int>(o.size(2)), static_cast<float>(eps), out.data_ptr(), attn.data_ptr(),
                          mean.data_ptr<float>(), rstd.data_ptr<float>(), out.scalar_type(), stream());
}

void layernorm_bwd_step(const Tensor& grad_out, const Tensor& attn, const Tensor& residual, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd, const Tensor& grad_residual, const Tensor& delta,
                        const Tensor& grad_weight, const Tensor& grad_bias) {
  LayerNormBwdParams p{};
  p.rows = rows_of(attn);
  p.H = static_cast<int>(attn.size(2));
  if (p.rows == 0) {  // no rows: the parameter gradients are empty sums
    grad_weight.zero_();
    grad_bias.zero_();
    return;
  }
  p.grad_out = grad_out.data_ptr();
  p.attn = attn.data_ptr();
  p.residual = residual.data_ptr();
  p.weight = weight.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.grad_residual = grad_residual.data_ptr();
  p.delta = delta.data_ptr<float>();
  const Tensor partials = at::empty({layernorm_bwd_blocks(p.rows), 2, p.H}, attn.options().dtype(at::kFloat));
  p.partials = partials.data_ptr<float>();
  layernorm_bwd(p, attn.scalar_type(), stream());
  layernorm_bwd_reduce(p.partials, partials.size(0), p.H, grad_weight.data_ptr(), grad_bias.data_ptr(),
                       attn.scalar_type(), stream());
}

void softmax_bwd(const Tensor& probs, const Tensor& dp, const Tensor& delta, double scale, const Tensor& ds) {
  gemm_softmax_bwd(probs.data_ptr(), dp.data_ptr<float>(), delta.data_ptr<float>(), rows_of(probs),
                   static_cast<int>(probs.size(2)), static_cast<float>(scale), ds.data_ptr(), ds.scalar_type(),
                   stream());
}

}  // namespace

const GemmPlanSteps& gemm_plan_steps() {
  static const GemmPlanSteps steps{product_acc, softmax, residual_layernorm, layernorm_bwd_step, softmax_bwd};
  return steps;
}

}  // namespace lstm_attn::gpu
