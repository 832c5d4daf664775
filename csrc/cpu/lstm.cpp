// lstm_fwd / lstm_bwd: the layer loop shared by every plan, the step-by-step plan, and the ops' CPU kernels (the
// step-by-step plan with the cell's loop below). See lstm.h.
#include "cpu/lstm.h"

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <string_view>

#include "checks.h"
#include "cpu/cell_rows.h"
#include "cpu/lstm_fused.h"

namespace lstm_attn::lstm {

at::ScalarType acc_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor matmul_acc(const at::Tensor& a, const at::Tensor& b) {
  const auto acc = acc_dtype(a.scalar_type());
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  // cuBLAS multiplies 16-bit operands into a float result (mm.dtype) without converting them first.
  if (a.is_cuda() && a.scalar_type() == b.scalar_type() && a.scalar_type() != acc) return at::mm(a, b, acc);
#endif
  return at::mm(a.to(acc), b.to(acc));
}

namespace {

// The input of layer l as a (T * B, I_l) matrix in x's dtype: x time-major, or the layer below's h (steps 1 .. T)
// times its dropout mask.
at::Tensor layer_input(const ForwardState& f, int64_t l) {
  if (l == 0) return f.x.transpose(0, 1).reshape({f.T * f.B, f.x.size(2)});
  at::Tensor h = f.hidden[l - 1].slice(0, 1);
  if (f.mask) h = h * (*f.mask)[l - 1];
  return h.reshape({f.T * f.B, f.H});
}

// The weight gradients of layer l from its preactivation gradients: sums over every step and row, as GEMMs in the
// dtype (float accumulation inside them); the bias gradients summed in acc. b_ih and b_hh get equal gradients.
void append_weight_gradients(const ForwardState& f, const at::Tensor& d_pre, int64_t l,
                             std::vector<at::Tensor>& grads) {
  const at::Tensor d = d_pre[l].view({f.T * f.B, 4 * f.H});
  // d^T input; on CPU as (input^T d)^T, which MKL runs about a quarter faster for these tall, narrow operands.
  const auto d_t_times = [&](const at::Tensor& input) {
    return d.is_cpu() ? at::mm(input.t(), d).t().contiguous() : at::mm(d.t(), input);
  };
  grads.push_back(d_t_times(layer_input(f, l)));
  grads.push_back(d_t_times(f.hidden[l].slice(0, 0, f.T).reshape({f.T * f.B, f.H})));
  const at::Tensor d_bias = d.sum(0, false, acc_dtype(d.scalar_type())).to(d.scalar_type());
  grads.push_back(d_bias);
  grads.push_back(d_bias.clone());
}

// An uninitialised tensor from the plan's workspace allocator.
at::Tensor workspace(const Plan& plan, at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (plan.workspace_allocator == nullptr) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, plan.workspace_allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

ForwardState make_state(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                        const std::optional<at::Tensor>& dropout_mask, bool keep) {
  ForwardState f;
  f.x = x;
  f.w = weights.vec();
  f.h0 = h0;
  f.c0 = c0;
  if (dropout_mask.has_value() && dropout_mask->defined()) f.mask = *dropout_mask;
  f.L = static_cast<int64_t>(weights.size()) / 4;
  f.B = x.size(0);
  f.T = x.size(1);
  f.H = weights[1].size(1);
  f.keep = keep;
  return f;
}

ForwardResult run_forward(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                          const std::optional<at::Tensor>& dropout_mask, bool for_backward, const Plan& plan) {
  const int64_t group = plan.group;
  ForwardState f = make_state(x, weights, h0, c0, dropout_mask, for_backward);
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H;
  const auto acc = x.options().dtype(acc_dtype(x.scalar_type()));
  if (for_backward || !plan.own_io) {
    f.hidden = workspace(plan, {L, T + 1, B, H}, x.options());
    f.hidden.select(1, 0).copy_(h0);
  } else {
    f.hidden = at::empty({0}, x.options());
  }
  if (plan.own_io) f.output = workspace(plan, {B, T, H}, x.options());
  // Without for_backward the plans keep no cell states or gates.
  f.cell = workspace(plan, for_backward ? std::vector<int64_t>{L, T, B, H} : std::vector<int64_t>{0}, acc);
  f.gates = workspace(plan, for_backward ? std::vector<int64_t>{L, T, B, 4 * H} : std::vector<int64_t>{0}, acc);
  f.h_n = at::empty({L, B, H}, x.options());
  f.c_n = at::empty({L, B, H}, x.options());
  for (int64_t l0 = 0; l0 < L; l0 += group) {
    at::Tensor proj;
    if (!plan.own_input_projection) {
      const at::Tensor bias = f.w[4 * l0 + 2].to(acc.dtype()) + f.w[4 * l0 + 3].to(acc.dtype());
      proj = matmul_acc(layer_input(f, l0), f.w[4 * l0].t()).add_(bias).view({T, B, 4 * H});
    }
    plan.forward(f, l0, std::min(group, L - l0), proj);
  }
  if (!plan.own_io) {
    f.h_n.copy_(f.hidden.select(1, T));
    f.output = f.hidden[L - 1].slice(0, 1).transpose(0, 1).contiguous();
  }
  return {f.output, f.h_n, f.c_n, for_backward ? f.hidden : at::empty({0}, x.options()), f.cell, f.gates};
}

ForwardState saved_forward(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                           const std::optional<at::Tensor>& dropout_mask, const at::Tensor& hidden,
                           const at::Tensor& cell, const at::Tensor& gates) {
  ForwardState f = make_state(x, weights, h0, c0, dropout_mask, true);
  f.hidden = hidden;
  f.cell = cell;
  f.gates = gates;
  return f;
}

BackwardResult run_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                            const ForwardState& f, const Plan& plan) {
  const int64_t group = plan.group;
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H;
  const auto acc = acc_dtype(f.x.scalar_type());
  BackwardState b{f, grad_h_n, grad_c_n};
  b.d_pre = workspace(plan, {L, T, B, 4 * H}, f.x.options());
  b.grad_h0 = at::empty({L, B, H}, f.x.options());
  b.grad_c0 = at::empty({L, B, H}, f.x.options());
  at::Tensor grad_x = at::empty_like(f.x);
  // The gradient reaching the top layer of each group from outside it, time-major in acc.
  at::Tensor dy = grad_output.transpose(0, 1).to(acc);
  if (!plan.own_io) dy = dy.contiguous();
  for (int64_t l0 = (L - 1) / group * group; l0 >= 0; l0 -= group) {
    plan.backward(b, l0, std::min(group, L - l0), dy);
    // The gradient of the group's input: the layer below's h through its dropout mask, or x.
    const at::Tensor dx = matmul_acc(b.d_pre[l0].view({T * B, 4 * H}), f.w[4 * l0]).view({T, B, -1});
    if (l0 > 0) dy = f.mask ? dx * (*f.mask)[l0 - 1] : dx;
    else grad_x.copy_(dx.transpose(0, 1));
  }
  std::vector<at::Tensor> grad_weights;
  for (int64_t l = 0; l < L; ++l) append_weight_gradients(f, b.d_pre, l, grad_weights);
  return {grad_x, grad_weights, b.grad_h0, b.grad_c0};
}

ForwardGroup stepwise_forward(const StepKernels& steps) {
  return [steps](ForwardState& f, int64_t l, int64_t, const at::Tensor& proj) {
    const auto acc = proj.options();
    const at::Tensor w_hh = f.w[4 * l + 1].to(acc.dtype()).t();
    at::Tensor c_prev = f.c0[l].to(acc.dtype()).contiguous();
    // Without for_backward the gates and cell states are not kept: one step's worth of scratch.
    const at::Tensor scratch_pre = f.keep ? at::Tensor() : at::empty({f.B, 4 * f.H}, acc);
    const at::Tensor scratch_c[2] = {f.keep ? at::Tensor() : at::empty({f.B, f.H}, acc),
                                     f.keep ? at::Tensor() : at::empty({f.B, f.H}, acc)};
    for (int64_t t = 0; t < f.T; ++t) {
      at::Tensor pre = f.keep ? f.gates[l][t] : scratch_pre;
      at::add_out(pre, proj[t], at::mm(f.hidden[l][t].to(acc.dtype()), w_hh));
      const at::Tensor c = f.keep ? f.cell[l][t] : scratch_c[t % 2];
      steps.forward(pre, c_prev, c, f.hidden[l][t + 1]);
      c_prev = c;
    }
    f.c_n[l].copy_(c_prev);
  };
}

BackwardGroup stepwise_backward(const StepKernels& steps) {
  return [steps](BackwardState& b, int64_t l, int64_t, const at::Tensor& dy) {
    const ForwardState& f = b.f;
    const auto acc = dy.scalar_type();
    const at::Tensor w_hh = f.w[4 * l + 1].to(acc);
    const at::Tensor c0 = f.c0[l].to(acc).contiguous();
    at::Tensor dh_next = b.grad_h_n[l].to(acc);  // from h_n at t = T - 1, then from step t + 1
    const at::Tensor dc = b.grad_c_n[l].to(acc).clone();
    for (int64_t t = f.T - 1; t >= 0; --t) {
      const at::Tensor dh = dy[t] + dh_next;
      steps.backward(f.gates[l][t], f.cell[l][t], t > 0 ? f.cell[l][t - 1] : c0, dh, dc, b.d_pre[l][t]);
      dh_next = at::mm(b.d_pre[l][t].to(acc), w_hh);
    }
    b.grad_h0[l].copy_(dh_next);
    b.grad_c0[l].copy_(dc);
  };
}

std::vector<at::Tensor> contiguous(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

}  // namespace

Plan stepwise_plan(const StepKernels& steps) { return {1, stepwise_forward(steps), stepwise_backward(steps)}; }

ForwardResult forward(const Plan& plan, const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                      const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask, bool for_backward) {
  // The ATen calls inside the op are its own arithmetic: autocast, if on, has already chosen the op's dtype.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return run_forward(x.contiguous(), contiguous(weights), h0.contiguous(), c0.contiguous(), contiguous(dropout_mask),
                     for_backward, plan);
}

BackwardResult backward(const Plan& plan, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                        const at::Tensor& grad_c_n, const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                        const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask, const at::Tensor& hidden,
                        const at::Tensor& cell, const at::Tensor& gates) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as in forward
  const ForwardState f = saved_forward(x.contiguous(), contiguous(weights), h0.contiguous(), c0.contiguous(),
                                       contiguous(dropout_mask), hidden.contiguous(), cell.contiguous(),
                                       gates.contiguous());
  return run_backward(grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), f, plan);
}

namespace {

// Rows per parallel chunk: a chunk of a few thousand cells amortises a task; tiny steps stay on one thread.
int64_t grain_rows(int64_t H) { return std::max<int64_t>(1, 4096 / H); }

template <typename scalar_t>
void cpu_step_forward(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& h) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = c.size(0), H = c.size(1);
  acc_t* p = pre.data_ptr<acc_t>();
  const acc_t* cp = c_prev.data_ptr<acc_t>();
  acc_t* cn = c.data_ptr<acc_t>();
  scalar_t* hn = h.data_ptr<scalar_t>();
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) cpu::cell_forward_row(H, p + b * 4 * H, cp + b * H, cn + b * H, hn + b * H);
  });
}

template <typename scalar_t>
void cpu_step_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev, const at::Tensor& dh,
                       const at::Tensor& dc, const at::Tensor& d_pre) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = c.size(0), H = c.size(1);
  const acc_t* g = gates.data_ptr<acc_t>();
  const acc_t* cs = c.data_ptr<acc_t>();
  const acc_t* cp = c_prev.data_ptr<acc_t>();
  const acc_t* dhs = dh.data_ptr<acc_t>();
  acc_t* dcs = dc.data_ptr<acc_t>();
  scalar_t* dp = d_pre.data_ptr<scalar_t>();
  at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      cpu::cell_backward_row(H, g + b * 4 * H, cs + b * H, cp + b * H, dhs + b * H, dcs + b * H, dp + b * 4 * H);
  });
}

void step_forward(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& h) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "lstm_step_forward_cpu",
                                  [&] { cpu_step_forward<scalar_t>(pre, c_prev, c, h); });
}

void step_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev, const at::Tensor& dh,
                   const at::Tensor& dc, const at::Tensor& d_pre) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, d_pre.scalar_type(), "lstm_step_backward_cpu",
                                  [&] { cpu_step_backward<scalar_t>(gates, c, c_prev, dh, dc, d_pre); });
}

constexpr StepKernels kCpuSteps{&step_forward, &step_backward};

// The named plan (lstm_attn/plans.py chooses; the backward is handed its forward's).
Plan cpu_plan(std::string_view name) {
  if (name == "fused") return fused_plan("");
  if (name == "fused-avx2" || name == "fused-sse2") return fused_plan(name.substr(6));
  TORCH_CHECK(name == "stepwise", "plan must be 'fused', 'fused-avx2', 'fused-sse2' or 'stepwise' on CPU, got '", name,
              "'");
  return stepwise_plan(kCpuSteps);
}

ForwardResult lstm_fwd_cpu(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                           const std::optional<at::Tensor>& dropout_mask, bool for_backward, std::string_view plan) {
  check_lstm_inputs(x, weights, h0, c0, dropout_mask);
  return forward(cpu_plan(plan), x, weights, h0, c0, dropout_mask, for_backward);
}

BackwardResult lstm_bwd_cpu(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                            const at::Tensor& x, at::TensorList weights, const at::Tensor& h0, const at::Tensor& c0,
                            const std::optional<at::Tensor>& dropout_mask, const at::Tensor& hidden,
                            const at::Tensor& cell, const at::Tensor& gates, std::string_view plan) {
  check_lstm_inputs(x, weights, h0, c0, dropout_mask);
  check_lstm_saved(x, h0.size(0), h0.size(2), hidden, cell, gates);
  check_lstm_grads(x, h0, grad_output, grad_h_n, grad_c_n);
  return backward(cpu_plan(plan), grad_output, grad_h_n, grad_c_n, x, weights, h0, c0, dropout_mask, hidden,
                  cell, gates);
}

}  // namespace
}  // namespace lstm_attn::lstm

TORCH_LIBRARY_IMPL(lstm_attn, CPU, m) {
  m.impl("lstm_fwd", &lstm_attn::lstm::lstm_fwd_cpu);
  m.impl("lstm_bwd", &lstm_attn::lstm::lstm_bwd_cpu);
}
