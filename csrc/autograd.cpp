// Autograd for the extension's forward ops, registered for the Autograd dispatch key of their schemas, so a call
// that needs gradients pays for one C++ autograd node rather than a Python autograd.Function (torch.library's
// register_autograd): that is tens of microseconds per forward+backward of host time, which the GPU's short
// calls wait on. Each backward is its *_bwd op, so the device kernels (CPU and CUDA) stay where they are and
// torch.compile traces the same two ops as before. The Triton ops keep their Python registration (ops.py).
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <string_view>

namespace lstm_attn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

class AttentionLayerNorm : public torch::autograd::Function<AttentionLayerNorm> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias,
                             double eps, double scale, std::string_view plan) {
    static auto fwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::attention_layernorm_fwd", "")
                          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, double, double, std::string_view)>();
    // Below Autograd: the call reaches the device kernel instead of coming back here.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, attn, lse, mean, rstd, probs] = fwd.call(q, k, v, residual, weight, bias, eps, scale, plan);
    ctx->mark_non_differentiable({attn, lse, mean, rstd, probs});
    ctx->save_for_backward({q, k, v, residual, weight, attn, lse, mean, rstd, probs});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["plan"] = std::string(plan);
    return {out, attn, lse, mean, rstd, probs};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::attention_layernorm_bwd", "")
                          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, double, std::string_view)>();
    // grads[0] is defined even when nothing used out: a Function materializes such gradients as zeros.
    const auto s = ctx->get_saved_variables();
    auto [dq, dk, dv, dresidual, dweight, dbias] =
        bwd.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
                 ctx->saved_data["scale"].toDouble(), ctx->saved_data["plan"].toStringRef());
    return {dq, dk, dv, dresidual, dweight, dbias, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_layernorm_fwd_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& residual,
    const at::Tensor& weight, const at::Tensor& bias, double eps, double scale, std::string_view plan) {
  auto r = AttentionLayerNorm::apply(q, k, v, residual, weight, bias, eps, scale, plan);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

class SoftmaxPool : public torch::autograd::Function<SoftmaxPool> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& u, const at::Tensor& c) {
    static auto fwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::softmax_pool_fwd", "")
                          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in AttentionLayerNorm::forward
    auto [pooled, lse] = fwd.call(x, u, c);
    ctx->mark_non_differentiable({lse});
    ctx->save_for_backward({x, u, c, pooled, lse});
    return {pooled, lse};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::softmax_pool_bwd", "")
                          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&)>();
    const auto s = ctx->get_saved_variables();
    auto [dx, du, dc] = bwd.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4]);
    return {dx, du, dc};
  }
};

std::tuple<at::Tensor, at::Tensor> softmax_pool_fwd_autograd(const at::Tensor& x, const at::Tensor& u,
                                                             const at::Tensor& c) {
  auto r = SoftmaxPool::apply(x, u, c);
  return {r[0], r[1]};
}

// Differentiable in x, every weight, h0 and c0. The workspace (hidden, cell, gates) is kept only where a gradient
// will be asked for, so a call under no_grad or on tensors that need none keeps no more than nn.LSTM does.
class Lstm : public torch::autograd::Function<Lstm> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                             const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask, bool for_backward,
                             std::string_view plan) {
    static auto fwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::lstm_fwd", "")
                          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                              const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, bool, std::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in AttentionLayerNorm::forward
    auto [output, h_n, c_n, hidden, cell, gates] = fwd.call(x, weights, h0, c0, dropout_mask, for_backward, plan);
    ctx->saved_data["plan"] = std::string(plan);
    ctx->mark_non_differentiable({hidden, cell, gates});
    // Materialized, the gradients of hidden, cell and gates would be zero-filled tensors as large as the workspace
    // on every backward, only to be ignored; backward makes zeros of the three it reads instead.
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> saved{x, h0, c0, dropout_mask.value_or(at::Tensor()), hidden, cell, gates};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    return {output, h_n, c_n, hidden, cell, gates};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("lstm_attn::lstm_bwd", "")
                          .typed<std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor>(
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              at::TensorList, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, std::string_view)>();
    const auto s = ctx->get_saved_variables();
    const at::TensorList weights(s.data() + 7, s.size() - 7);
    const std::optional<at::Tensor> mask = s[3].defined() ? std::optional<at::Tensor>(s[3]) : std::nullopt;
    // grads[0..2] (output, h_n, c_n): zeros where nothing used them.
    const at::Tensor& x = s[0];
    const int64_t L = s[1].size(0), B = s[1].size(1), H = s[1].size(2);
    const auto or_zeros = [&](const at::Tensor& g, at::IntArrayRef shape) {
      return g.defined() ? g : at::zeros(shape, x.options());
    };
    const std::string plan = ctx->saved_data["plan"].toStringRef();
    auto [dx, dweights, dh0, dc0] =
        bwd.call(or_zeros(grads[0], {x.size(0), x.size(1), H}), or_zeros(grads[1], {L, B, H}),
                 or_zeros(grads[2], {L, B, H}), x, weights, s[1], s[2], mask, s[4], s[5], s[6], plan);
    tensor_list out{dx};
    out.insert(out.end(), dweights.begin(), dweights.end());
    // No gradient for dropout_mask, for_backward, plan.
    out.insert(out.end(), {dh0, dc0, at::Tensor(), at::Tensor(), at::Tensor()});
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_autograd(
    const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& dropout_mask, bool for_backward, std::string_view plan) {
  bool needs_grad = x.requires_grad() || h0.requires_grad() || c0.requires_grad();
  for (const auto& w : weights) needs_grad = needs_grad || w.requires_grad();
  needs_grad = needs_grad && at::GradMode::is_enabled();
  auto r = Lstm::apply(x, weights, h0, c0, dropout_mask, for_backward || needs_grad, plan);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_attn, Autograd, m) {
  m.impl("attention_layernorm_fwd", &attention_layernorm_fwd_autograd);
  m.impl("softmax_pool_fwd", &softmax_pool_fwd_autograd);
  m.impl("lstm_fwd", &lstm_fwd_autograd);
}

}  // namespace lstm_attn
