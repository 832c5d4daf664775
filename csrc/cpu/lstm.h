// lstm_fwd / lstm_bwd for any device: the layer loop that every plan shares, and the step-by-step plan.
//
// The shared part (run_forward, run_backward) splits the layers into groups (one kernel launch of the fused CUDA plan
// runs a group as a wavefront; the step-by-step plan takes one layer at a time) and does, around each group's
// recurrence, what is a large product over all steps: the input projection of the group's bottom layer before it, and
// after all recurrences the gradient of each group's input and every weight gradient.
//
// The step-by-step plan runs a recurrence as a GEMM per time step through ATen (oneDNN or BLAS on CPU, cuBLAS on a
// GPU) and the cell's elementwise step (csrc/lstm_cell.h) as the device's own loop or kernel (StepKernels). It is the
// CPU implementation of the ops and, on a GPU, the plan for what the fused kernels do not cover and the fallback that
// plan "stepwise" selects (lstm_attn/plans.py).
//
// Both plans compute alike: preactivations, cell states, gates and the gradients inside a step in the accumulation
// type acc (float; double for float64), with 16-bit operands' products exact in it; h_t rounded to the dtype once,
// where it is stored, and used as stored by the next step and layer; a dropped input rounded as torch.dropout rounds
// it (h * mask in the dtype); each preactivation gradient rounded to the dtype once, then used by both the recurrent
// product and the weight gradients, which are GEMMs in the dtype after the recurrence.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <tuple>
#include <vector>

namespace lstm_attn::lstm {

at::ScalarType acc_dtype(at::ScalarType dtype);

// a (m, k) @ b (k, n) with the result in the accumulation type, for operands in the dtype or acc.
at::Tensor matmul_acc(const at::Tensor& a, const at::Tensor& b);

// Everything one call of lstm_fwd reads and writes. Sizes: L layers, B rows, T steps, H units; acc as above.
struct ForwardState {
  at::Tensor x;                   // (B, T, I)
  std::vector<at::Tensor> w;      // 4 L: w_ih, w_hh, b_ih, b_hh per layer
  at::Tensor h0, c0;              // (L, B, H)
  std::optional<at::Tensor> mask;  // (L - 1, T, B, H) or none
  int64_t L, B, T, H;
  bool keep;                      // for_backward: fill cell and gates
  at::Tensor hidden;              // (L, T + 1, B, H): hidden[l][0] = h0[l], hidden[l][t + 1] = h_t; filled, but
                                  // empty under a plan with own_io unless keep
  at::Tensor output;              // (B, T, H): the top layer's h, filled by the runner under a plan with own_io
  at::Tensor cell, gates;         // (L, T, B, H), (L, T, B, 4H), acc; empty unless keep
  at::Tensor h_n, c_n;            // (L, B, H)
};

struct BackwardState {
  const ForwardState& f;          // the forward's inputs and saved tensors (hidden, cell, gates)
  at::Tensor grad_h_n, grad_c_n;  // (L, B, H)
  at::Tensor d_pre;               // (L, T, B, 4H), dtype: the preactivation gradients
  at::Tensor grad_h0, grad_c0;    // (L, B, H)
};

// Runs layers [l0, l0 + n) forward. proj (T, B, 4H, acc): layer l0's input projection with both its biases.
using ForwardGroup = std::function<void(ForwardState&, int64_t l0, int64_t n, const at::Tensor& proj)>;
// Runs layers [l0, l0 + n) backward: fills d_pre, grad_h0 and grad_c0 of those layers. dy (T, B, H): the gradient of
// the top layer's h from outside the group (the output, or the layer above), a view in any strides.
using BackwardGroup = std::function<void(BackwardState&, int64_t l0, int64_t n, const at::Tensor& dy)>;

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor>;

// How a device runs the recurrences: groups of up to `group` layers, each by the two runners. A plan that computes
// its bottom layer's input product inside its recurrence (own_input_projection) gets an undefined proj.
struct Plan {
  int64_t group;
  ForwardGroup forward;
  BackwardGroup backward;
  bool own_input_projection = false;
  // Where the large workspaces (hidden, cell, gates, d_pre) come from: null for at::empty (the CUDA plans). The fused
  // CPU plan's asks the kernel for transparent huge pages, as THP_MEM_ALLOC_ENABLE=1 would for every tensor: a fresh
  // 4 KiB page costs a fault and its zeroing on first touch, some 1 us each, and these tensors are written once.
  c10::Allocator* workspace_allocator = nullptr;
  // The fused CPU plan's runners move no data the shared loop would otherwise transpose: the forward writes output
  // (B, T, H) and h_n itself and, without keep, needs no hidden (its steps' h live in a per-thread rolling buffer);
  // the backward reads dy as a (T, B, H) view of the output's gradient in its (B, T, H) layout.
  bool own_io = false;
};

// lstm_fwd and lstm_bwd by a plan, for inputs that check_lstm_inputs (and, backward, check_lstm_saved and
// check_lstm_grads) accepted; they need not be contiguous.
ForwardResult forward(const Plan& plan, const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                      const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask, bool for_backward);
BackwardResult backward(const Plan& plan, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                        const at::Tensor& grad_c_n, const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                        const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask, const at::Tensor& hidden,
                        const at::Tensor& cell, const at::Tensor& gates);

// The elementwise half of a step for every (batch row, unit) of one layer; every tensor contiguous.
struct StepKernels {
  // pre (B, 4H, acc): the preactivations in, the gates (i, f, g, o after activation) out, in place. c_prev (B, H,
  // acc) in; c (B, H, acc) and h (B, H, dtype) out.
  void (*forward)(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& h);
  // gates (B, 4H), c, c_prev (B, H): the step's saved values (acc). dh (B, H, acc): the total gradient of h_t. dc
  // (B, H, acc): the carry from step t + 1 in, the carry to step t - 1 out, in place. d_pre (B, 4H, dtype) out.
  void (*backward)(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev, const at::Tensor& dh,
                   const at::Tensor& dc, const at::Tensor& d_pre);
};

// The step-by-step plan: one layer per group, each step's product through ATen, its cell by `steps`.
Plan stepwise_plan(const StepKernels& steps);

}  // namespace lstm_attn::lstm
