// The "gemm" plan of attention_layernorm: the four attention products (two forward, three backward, plus dP) run
// through ATen's batched matmul, so on a GPU they are cuBLAS's, with torch's matmul precision flags
// (torch.backends.cuda.matmul.allow_tf32 and the like) applying to them as to any torch.bmm; between the products run
// the device's own fused elementwise steps. The orchestration is written once (attention_gemm.cpp) and runs on every
// device: the CPU's steps (cpu/attention_gemm_steps.cpp) let CI check the decomposition, its saved tensors and its
// autograd wiring against the reference on a machine without a GPU; the CUDA steps are
// cuda/attention/gemm/steps.cu.
//
// Forward (4 launches on a GPU):        S = q k^T (accumulation dtype)
//                                       probs, lse = softmax(S * scale)             [step: softmax]
//                                       O = probs v (accumulation dtype)
//                                       attn, out, mean, rstd = LN(O + residual)    [step: residual_layernorm]
// Backward (7 launches):                dO, delta, grad_weight, grad_bias = LN backward  [step: layernorm_bwd, 2]
//                                       dP = dO v^T (accumulation dtype)
//                                       dS = probs (dP - delta) * scale             [step: softmax_bwd]
//                                       grad_v = probs^T dO, grad_q = dS k, grad_k = dS^T q
// Six products, as many as the reference, none recomputed: the forward keeps probs (B, Tq, Tk) in the input dtype
// for the backward. That is the price of this plan: O(B * Tq * Tk) memory held from forward to backward, plus the
// float32 scores or dP while a pass runs, where the tiled and flash plans hold O(B * T * H). For long sequences the
// caller picks another plan (lstm_attn/plans.py).
//
// The accumulation dtype is float32 (float64 for float64 inputs): scores and dP are kept in it until they become
// probs and dS, which are rounded to the input dtype because they are operands of the next products, as in the
// reference.
//
// Split TF32 products (plan "gemm3xtf32", float32 only): each product a b runs as three TF32 products,
// a_hi b_lo + a_lo b_hi + a_hi b_hi, where x_hi is x rounded to TF32 (10 mantissa bits, to nearest) and x_lo = x - x_hi
// (exact in float32): the idea of CUTLASS's OpMultiplyAddFastF32. What it drops, a_lo b_lo and the TF32 rounding of
// the lo parts, is about 2^-21 of each term, against 2^-11 for one TF32 product, so the result keeps the float32
// parity rule (1e-5 relative of float64) where a single TF32 product does not, at three Tensor Core products' cost
// instead of one FFMA (SIMT) SGEMM's (by the H200's data sheet, TF32 runs about 7x float32's FFMA rate). It is never
// chosen where torch's flags ask for exact float32 products unless a caller names it (lstm_attn/plans.py).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace lstm_attn {

// A device's elementwise steps. Tensors are contiguous; outputs are preallocated and written in full. Shapes:
// scores, dp, probs, ds (B, Tq, Tk); o, residual, attn, out, grad_out, grad_residual (B, Tq, H); lse, mean, rstd,
// delta (B, Tq) in the accumulation dtype; weight, bias, grad_weight, grad_bias (H,).
struct GemmPlanSteps {
  // a (B, M, K) @ b (B, K, N) in the accumulation dtype; a and b may be transposed views.
  at::Tensor (*product_acc)(const at::Tensor& a, const at::Tensor& b);
  // float32 a (B, M, K) @ b (B, K, N) -> float32 with TF32 operands, whatever torch's precision flags say: on a GPU
  // cuBLAS's CUBLAS_COMPUTE_32F_FAST_TF32; on a CPU a model of it (each operand truncated to TF32, the worst the
  // Tensor Cores do, then float32 products and sums), so that CI measures the split's error.
  at::Tensor (*product_tf32)(const at::Tensor& a, const at::Tensor& b);
  // probs = exp(scores * scale - lse), lse = log sum_j exp(scores_j * scale), per row.
  void (*softmax)(const at::Tensor& scores, double scale, const at::Tensor& probs, const at::Tensor& lse);
  // attn = o rounded to the input dtype; y = attn + residual (from attn as stored, so that the backward rebuilds the
  // same y); out = (y - mean) * rstd * weight + bias.
  void (*residual_layernorm)(const at::Tensor& o, const at::Tensor& residual, const at::Tensor& weight,
                             const at::Tensor& bias, double eps, const at::Tensor& out, const at::Tensor& attn,
                             const at::Tensor& mean, const at::Tensor& rstd);
  // The LayerNorm backward: grad_residual = dy, which is also the attention's dO; delta = rowsum(attn * dO) with dO
  // as stored; grad_weight, grad_bias summed over rows in a fixed order.
  void (*layernorm_bwd)(const at::Tensor& grad_out, const at::Tensor& attn, const at::Tensor& residual,
                        const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
                        const at::Tensor& grad_residual, const at::Tensor& delta, const at::Tensor& grad_weight,
                        const at::Tensor& grad_bias);
  // ds = probs * (dp - delta) * scale: the softmax backward, with the score scale folded in so that the products
  // give grad_q and grad_k directly.
  void (*softmax_bwd)(const at::Tensor& probs, const at::Tensor& dp, const at::Tensor& delta, double scale,
                      const at::Tensor& ds);
};

namespace cpu {
const GemmPlanSteps& gemm_plan_steps();  // cpu/attention_gemm_steps.cpp
}
namespace gpu {
const GemmPlanSteps& gemm_plan_steps();  // cuda/attention/gemm/steps.cpp
// Refuses, naming the reason, where this build has no cuBLAS for the split TF32 products.
void check_tf32_products();
}

// x rounded to the nearest TF32 value (ties away from zero, as cvt.rna.tf32.f32); non-finite values unchanged.
at::Tensor round_to_tf32(const at::Tensor& x);

// (out, attn, lse, mean, rstd, probs), as the schema's attention_layernorm_fwd. Inputs already checked. split_tf32:
// every product as three TF32 products (float32 inputs only).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_fwd(
    const GemmPlanSteps& steps, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps, double scale,
    bool split_tf32);

// (grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias). Inputs already checked, probs included.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gemm_bwd(
    const GemmPlanSteps& steps, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& attn,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& probs, double scale, bool split_tf32);

}  // namespace lstm_attn
