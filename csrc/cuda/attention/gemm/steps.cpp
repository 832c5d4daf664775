// The CUDA steps of the gemm plan (csrc/attention_gemm.h): the products through ATen's bmm, which is cuBLAS under
// torch's matmul precision flags, and the fused kernels of kernels.cu between them. Host code only: it is compiled by
// the host compiler, which keeps ATen's headers out of nvcc.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#ifndef LSTM_ATTN_WITH_CUBLAS  // setup.py defines it to 1 where it found cuBLAS (the gemm3xtf32 plan's products)
#define LSTM_ATTN_WITH_CUBLAS 0
#endif
#if LSTM_ATTN_WITH_CUBLAS
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#endif

#include <algorithm>
#include <climits>
#include <tuple>

#include "attention_gemm.h"
#include "cuda/attention/attention_layernorm.cuh"
#include "cuda/attention/gemm/kernels.cuh"

namespace lstm_attn::gpu {
namespace {

using at::Tensor;

constexpr const char* kNoCublas =
    "plan 'gemm3xtf32' calls cuBLAS, and this build of lstm_attn found neither its headers nor its library (the CUDA "
    "toolkit's or torch's nvidia packages): rebuild where they are, or use plan 'gemm'";

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
int64_t rows_of(const Tensor& t) { return t.size(0) * t.size(1); }

Tensor product_acc(const Tensor& a, const Tensor& b) {
  // 16-bit operands, float32 result: cuBLAS accumulates in float32 and writes it without rounding to 16 bits.
  return a.scalar_type() == at::kFloat ? at::bmm(a, b) : at::bmm(a, b, at::kFloat);
}

#if LSTM_ATTN_WITH_CUBLAS
// A row-major (batch, R, C) operand as cuBLAS (column-major) reads it: with contiguous rows it reads t^T (op N) with
// leading dimension stride(1); with contiguous columns (a transposed view) it reads t, so op T, leading dimension
// stride(2). Anything else is copied to contiguous rows first.
std::tuple<Tensor, cublasOperation_t, int64_t> as_operand(const Tensor& t) {
  if (t.stride(2) == 1 && t.stride(1) >= std::max<int64_t>(1, t.size(2))) return {t, CUBLAS_OP_N, t.stride(1)};
  if (t.stride(1) == 1 && t.stride(2) >= std::max<int64_t>(1, t.size(1))) return {t, CUBLAS_OP_T, t.stride(2)};
  const Tensor c = t.contiguous();
  return {c, CUBLAS_OP_N, std::max<int64_t>(1, c.size(2))};
}
#endif

Tensor product_tf32(const Tensor& a_in, const Tensor& b_in) {
#if LSTM_ATTN_WITH_CUBLAS
  const int64_t batch = a_in.size(0), M = a_in.size(1), K = a_in.size(2), N = b_in.size(2);
  Tensor c = at::empty({batch, M, N}, a_in.options());
  if (c.numel() == 0) return c;
  if (K == 0) return c.zero_();
  TORCH_CHECK(std::max({M, N, K}) <= INT_MAX, "gemm3xtf32: a product's sizes must fit in 32 bits, got M = ", M,
              ", N = ", N, ", K = ", K);
  // Row-major C = A B is column-major C^T = B^T A^T: cuBLAS's first operand is B, its second A.
  const auto [a, op_a, ld_a] = as_operand(a_in);
  const auto [b, op_b, ld_b] = as_operand(b_in);
  const float one = 1.f, zero = 0.f;
  // torch's handle for the current device and stream (its workspace is set, so CUDA graph capture works).
  TORCH_CUDABLAS_CHECK(cublasGemmStridedBatchedEx(
      at::cuda::getCurrentCUDABlasHandle(), op_b, op_a, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
      &one, b.const_data_ptr(), CUDA_R_32F, static_cast<int>(ld_b), b.stride(0), a.const_data_ptr(), CUDA_R_32F,
      static_cast<int>(ld_a), a.stride(0), &zero, c.data_ptr(), CUDA_R_32F, static_cast<int>(N), M * N,
      static_cast<int>(batch), CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
  return c;
#else
  (void)a_in;
  (void)b_in;
  TORCH_CHECK(false, kNoCublas);
#endif
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

void check_tf32_products() { TORCH_CHECK(LSTM_ATTN_WITH_CUBLAS, kNoCublas); }

const GemmPlanSteps& gemm_plan_steps() {
  static const GemmPlanSteps steps{product_acc, product_tf32, softmax, residual_layernorm, layernorm_bwd_step,
                                   softmax_bwd};
  return steps;
}

}  // namespace lstm_attn::gpu
