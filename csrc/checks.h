// Input checks shared by the CPU and CUDA kernels, run before any launch. The Python API checks the same
// things with friendlier wording; these guard direct calls of torch.ops.lstm_attn.* so that a bad call is
// a clear error, never a fault inside a kernel.
#pragma once

#include <ATen/ATen.h>

#include <string_view>

namespace lstm_attn {

inline void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
              " has ", ref.scalar_type());
}

inline void check_attention_layernorm_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& residual, const at::Tensor& weight) {
  TORCH_CHECK(q.dim() == 3, "q must be 3-D (B, Tq, H), got ", q.dim(), "-D");
  TORCH_CHECK(k.dim() == 3, "k must be 3-D (B, Tk, H), got ", k.dim(), "-D");
  TORCH_CHECK(q.size(1) > 0 && q.size(2) > 0 && k.size(1) > 0, "Tq, Tk and H must be at least 1, got q ",
              q.sizes(), ", k ", k.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(2), "k has shape ", k.sizes(),
              "; expected (B, Tk, H) to match q ", q.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v has shape ", v.sizes(), "; expected the shape of k, ", k.sizes());
  TORCH_CHECK(residual.sizes() == q.sizes(), "residual has shape ", residual.sizes(), "; expected the shape of q, ",
              q.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == q.size(2), "weight has shape ", weight.sizes(),
              "; expected (H,) = (", q.size(2), ",)");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q has dtype ", q.scalar_type(), "; expected a floating dtype");
  check_same(k, "k", q, "q");
  check_same(v, "v", q, "q");
  check_same(residual, "residual", q, "q");
  check_same(weight, "weight", q, "q");
}

inline void check_row_stats(const at::Tensor& t, const char* name, const at::Tensor& q) {
  const auto expected = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(t.scalar_type() == expected, name, " must be ", expected, " for ", q.scalar_type(), " inputs, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == q.size(0) && t.size(1) == q.size(1), name, " has shape ", t.sizes(),
              "; expected (B, Tq) = (", q.size(0), ", ", q.size(1), ")");
  TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
}

// The kernel plans of attention_layernorm, the schema's `plan` argument. Which plan runs for which shape is decided
// by the caller (lstm_attn/plans.py for the cuda backend); each device runs the plans it has (CPU: tiled, gemm;
// CUDA: tiled, flash, gemm) and refuses the others by name.
enum class Plan { kTiled, kFlash, kGemm };

inline Plan parse_plan(std::string_view plan) {
  if (plan == "tiled") return Plan::kTiled;
  if (plan == "flash") return Plan::kFlash;
  TORCH_CHECK(plan == "gemm", "plan must be 'tiled', 'flash' or 'gemm', got '", plan, "'");
  return Plan::kGemm;
}

// The gemm plan's backward takes the probabilities its forward kept, (B, Tq, Tk) in q's dtype.
inline void check_probs(const at::Tensor& probs, const at::Tensor& q, const at::Tensor& k) {
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == q.size(0) && probs.size(1) == q.size(1) &&
                  probs.size(2) == k.size(1),
              "probs has shape ", probs.sizes(), "; plan 'gemm' needs the probabilities its forward kept, (B, Tq, Tk) = (",
              q.size(0), ", ", q.size(1), ", ", k.size(1), ")");
  check_same(probs, "probs", q, "q");
}

inline void check_softmax_pool_inputs(const at::Tensor& x, const at::Tensor& u, const at::Tensor& c) {
  TORCH_CHECK(x.dim() == 3, "x must be 3-D (B, T, H), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0, "T and H must be at least 1, got x ", x.sizes());
  TORCH_CHECK(u.dim() == 2 && u.size(0) == x.size(0) && u.size(1) == x.size(2), "u has shape ", u.sizes(),
              "; expected (B, H) to match x ", x.sizes());
  TORCH_CHECK(c.dim() == 1 && c.size(0) == x.size(0), "c has shape ", c.sizes(), "; expected (B,) = (", x.size(0),
              ",)");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x has dtype ", x.scalar_type(), "; expected a floating dtype");
  check_same(u, "u", x, "x");
  check_same(c, "c", x, "x");
}

}  // namespace lstm_attn
