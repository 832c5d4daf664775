// Input checks shared by the CPU and CUDA kernels, run before any launch. The Python API checks the same
// things with friendlier wording; these guard direct calls of torch.ops.lstm_attn.* so that a bad call is
// a clear error, never a fault inside a kernel.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>

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
// by the caller (lstm_attn/plans.py for the cuda backend); each device runs the plans it has (CPU: tiled, gemm,
// gemm3xtf32; CUDA: all four) and refuses the others by name. gemm3xtf32 is the gemm plan with every float32 product
// split into three TF32 products (attention_gemm.h): float32 inputs only.
enum class Plan { kTiled, kFlash, kGemm, kGemm3xTf32 };

inline Plan parse_plan(std::string_view plan) {
  if (plan == "tiled") return Plan::kTiled;
  if (plan == "flash") return Plan::kFlash;
  if (plan == "gemm3xtf32") return Plan::kGemm3xTf32;
  TORCH_CHECK(plan == "gemm", "plan must be 'tiled', 'flash', 'gemm' or 'gemm3xtf32', got '", plan, "'");
  return Plan::kGemm;
}

// The plans that run attention_gemm_fwd/bwd, and keep the probabilities from forward to backward.
inline bool is_gemm(Plan plan) { return plan == Plan::kGemm || plan == Plan::kGemm3xTf32; }

inline void check_gemm3xtf32(Plan plan, const at::Tensor& q) {
  TORCH_CHECK(plan != Plan::kGemm3xTf32 || q.scalar_type() == at::kFloat,
              "plan 'gemm3xtf32' splits float32 products into three TF32 ones and takes float32 inputs; got ",
              q.scalar_type(), " (plan 'gemm' runs every dtype)");
}

// The gemm plan's backward takes the probabilities its forward kept, (B, Tq, Tk) in q's dtype.
inline void check_probs(const at::Tensor& probs, const at::Tensor& q, const at::Tensor& k) {
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == q.size(0) && probs.size(1) == q.size(1) &&
                  probs.size(2) == k.size(1),
              "probs has shape ", probs.sizes(),
              "; the gemm plans need the probabilities their forward kept, (B, Tq, Tk) = (",
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

// lstm_fwd's inputs: x (B, T, I); weights, four per layer: w_ih (4H, I for layer 0, H above), w_hh (4H, H), b_ih and
// b_hh (4H,); h0, c0 (L, B, H); dropout_mask (L - 1, T, B, H) or undefined.
inline void check_lstm_inputs(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                              const std::optional<at::Tensor>& dropout_mask) {
  TORCH_CHECK(x.dim() == 3, "x must be 3-D (B, T, I), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0, "T and I must be at least 1, got x ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x has dtype ", x.scalar_type(), "; expected a floating dtype");
  TORCH_CHECK(!weights.empty() && weights.size() % 4 == 0, "weights must hold four tensors per layer (w_ih, w_hh, ",
              "b_ih, b_hh), got ", weights.size());
  TORCH_CHECK(weights[1].dim() == 2 && weights[1].size(1) > 0, "weights[1] (w_hh of layer 0) must be (4H, H), got ",
              weights[1].sizes());
  const int64_t L = static_cast<int64_t>(weights.size()) / 4, B = x.size(0), H = weights[1].size(1);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = l == 0 ? x.size(2) : H;
    const at::Tensor &w_ih = weights[4 * l], &w_hh = weights[4 * l + 1];
    TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * H && w_ih.size(1) == in, "weights[", 4 * l, "] (w_ih of layer ",
                l, ") has shape ", w_ih.sizes(), "; expected (4H, ", l == 0 ? "I" : "H", ") = (", 4 * H, ", ", in, ")");
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == H, "weights[", 4 * l + 1,
                "] (w_hh of layer ", l, ") has shape ", w_hh.sizes(), "; expected (4H, H) = (", 4 * H, ", ", H, ")");
    for (int64_t k = 2; k < 4; ++k)
      TORCH_CHECK(weights[4 * l + k].dim() == 1 && weights[4 * l + k].size(0) == 4 * H, "weights[", 4 * l + k,
                  "] (", k == 2 ? "b_ih" : "b_hh", " of layer ", l, ") has shape ", weights[4 * l + k].sizes(),
                  "; expected (4H,) = (", 4 * H, ",)");
    for (int64_t k = 0; k < 4; ++k) {
      const std::string name = "weights[" + std::to_string(4 * l + k) + "]";
      check_same(weights[4 * l + k], name.c_str(), x, "x");
    }
  }
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{h0, "h0"}, {c0, "c0"}}) {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == L && t.size(1) == B && t.size(2) == H, name, " has shape ", t.sizes(),
                "; expected (L, B, H) = (", L, ", ", B, ", ", H, ")");
    check_same(t, name, x, "x");
  }
  if (dropout_mask.has_value() && dropout_mask->defined()) {
    const at::Tensor& m = *dropout_mask;
    TORCH_CHECK(L > 1, "dropout_mask is given but there is one layer: dropout acts between layers");
    TORCH_CHECK(m.dim() == 4 && m.size(0) == L - 1 && m.size(1) == x.size(1) && m.size(2) == B && m.size(3) == H,
                "dropout_mask has shape ", m.sizes(), "; expected (L - 1, T, B, H) = (", L - 1, ", ", x.size(1), ", ",
                B, ", ", H, ")");
    check_same(m, "dropout_mask", x, "x");
  }
}

// lstm_bwd's saved tensors: hidden (L, T + 1, B, H) in x's dtype, cell (L, T, B, H) and gates (L, T, B, 4H) in the
// accumulation type (float32; float64 for float64 x), as lstm_fwd returns them with for_backward set.
inline void check_lstm_saved(const at::Tensor& x, int64_t L, int64_t H, const at::Tensor& hidden,
                             const at::Tensor& cell, const at::Tensor& gates) {
  const int64_t B = x.size(0), T = x.size(1);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(hidden.sizes() == at::IntArrayRef({L, T + 1, B, H}), "hidden has shape ", hidden.sizes(),
              "; expected (L, T + 1, B, H) (lstm_fwd returns it with for_backward=True)");
  check_same(hidden, "hidden", x, "x");
  TORCH_CHECK(cell.sizes() == at::IntArrayRef({L, T, B, H}), "cell has shape ", cell.sizes(),
              "; expected (L, T, B, H) (lstm_fwd returns it with for_backward=True)");
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({L, T, B, 4 * H}), "gates has shape ", gates.sizes(),
              "; expected (L, T, B, 4H) (lstm_fwd returns it with for_backward=True)");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{cell, "cell"}, {gates, "gates"}}) {
    TORCH_CHECK(t.scalar_type() == acc, name, " must be ", acc, " for ", x.scalar_type(), " x, got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  }
}

// lstm_bwd's incoming gradients: of output (B, T, H), h_n and c_n (L, B, H), in x's dtype.
inline void check_lstm_grads(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& grad_output,
                             const at::Tensor& grad_h_n, const at::Tensor& grad_c_n) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == x.size(0) && grad_output.size(1) == x.size(1) &&
                  grad_output.size(2) == h0.size(2),
              "grad_output has shape ", grad_output.sizes(), "; expected (B, T, H) = (", x.size(0), ", ", x.size(1),
              ", ", h0.size(2), ")");
  check_same(grad_output, "grad_output", x, "x");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_h_n, "grad_h_n"}, {grad_c_n, "grad_c_n"}}) {
    TORCH_CHECK(t.sizes() == h0.sizes(), name, " has shape ", t.sizes(), "; expected (L, B, H) = ", h0.sizes());
    check_same(t, name, x, "x");
  }
}

}  // namespace lstm_attn
