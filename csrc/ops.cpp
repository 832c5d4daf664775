// The schemas of lstm_attn's ops, defined once. Each device registers its kernels beside its own code:
// CPU in csrc/cpu/, CUDA in csrc/cuda/; autograd (device-independent) in csrc/autograd.cpp, where backward is
// written in terms of the *_bwd ops below. Fake (meta) rules are registered from Python (lstm_attn/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/tiles.h"
#include "cpu/workspace_allocator.h"
#include "cuda_queries.h"

extern "C" {
// `import lstm_attn._C` loads this library, which runs the TORCH_LIBRARY registrations; the module itself
// exports nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lstm_attn, m) {
  // out = layer_norm(softmax(q k^T * scale) v + residual). Also returns what backward needs: attn = softmax(q k^T *
  // scale) v (input dtype), row statistics lse, mean, rstd (B, Tq) in float32 (float64 for float64 inputs), and
  // probs: the softmax (B, Tq, Tk) where the plan keeps it for the backward ("gemm", "gemm3xtf32"), else an empty
  // tensor. plan names the kernel plan: "tiled" (every device), "flash" (CUDA), "gemm" and "gemm3xtf32" (float32;
  // every device; attention_gemm.h).
  // Which plan suits which shape is the caller's choice (lstm_attn/plans.py); the backward takes the forward's plan.
  m.def(
      "attention_layernorm_fwd(Tensor q, Tensor k, Tensor v, Tensor residual, Tensor weight, Tensor bias, "
      "float eps, float scale, str plan=\"tiled\") -> (Tensor out, Tensor attn, Tensor lse, Tensor mean, "
      "Tensor rstd, Tensor probs)");
  m.def(
      "attention_layernorm_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor residual, Tensor weight, "
      "Tensor attn, Tensor lse, Tensor mean, Tensor rstd, Tensor probs, float scale, str plan=\"tiled\") -> "
      "(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_residual, Tensor grad_weight, Tensor grad_bias)");
  // pooled = sum_j softmax_j(x_j . u + c) x_j; lse (B,) is the log-sum-exp of those scores (float32; float64 for float64 x).
  m.def("softmax_pool_fwd(Tensor x, Tensor u, Tensor c) -> (Tensor pooled, Tensor lse)");
  m.def(
      "softmax_pool_bwd(Tensor grad_pooled, Tensor x, Tensor u, Tensor c, Tensor pooled, Tensor lse) -> "
      "(Tensor grad_x, Tensor grad_u, Tensor grad_c)");
  // The CPU kernels' tile sizes [query block, backward query block, key tile, min backward tasks], for tests
  // that must reach every tile boundary.
  m.def("cpu_attention_tiles() -> int[]", &lstm_attn::cpu::attention_tiles);
  // Returns the CPU LSTM's cached workspaces to the system (csrc/cpu/workspace_allocator.h): their bytes.
  m.def("cpu_empty_cache() -> int", &lstm_attn::lstm::empty_workspace_cache);
  // The CUDA build's answers to what lstm_attn/plans.py must know before it chooses a plan (csrc/cuda_queries.h); in a
  // build without CUDA kernels they raise, saying so.
  // The rows per tile [BM, BN, ...] of the kernels a CUDA attention plan runs for (dtype, H): where the tile
  // boundaries lie, for the tests.
  m.def("cuda_attention_tiles(str plan, int H, ScalarType dtype) -> int[]",
        [](std::string_view plan, int64_t H, at::ScalarType dtype) {
          return lstm_attn::cuda_query(&lstm_attn::CudaQueries::attention_tiles)(plan, H, dtype);
        });
  // Why the fused CUDA LSTM kernels cannot run hidden size H in dtype on this device, or "" where they can.
  m.def("cuda_lstm_fused_unsupported(ScalarType dtype, int H, Device device) -> str",
        [](at::ScalarType dtype, int64_t H, at::Device device) {
          return lstm_attn::cuda_query(&lstm_attn::CudaQueries::lstm_fused_unsupported)(dtype, H, device);
        });
  // nn.LSTM(batch_first=True) with both biases: x (B, T, I); weights as nn.LSTM._flat_weights holds them, four per
  // layer (w_ih (4H, I or H), w_hh (4H, H), b_ih (4H,), b_hh (4H,)), gates in the order i, f, g, o; h0, c0
  // (L, B, H). dropout_mask (L - 1, T, B, H), in x's dtype, multiplies the input of layers 1 .. L - 1 (0 or
  // 1 / (1 - p): what torch.dropout draws); None: no dropout. Returns output (B, T, H), h_n and c_n (L, B, H), and,
  // when for_backward is set, what lstm_bwd reads: hidden (L, T + 1, B, H; each layer's h with
  // h0 first), cell (L, T, B, H) and gates (L, T, B, 4H; i, f, g, o after their activations), both float32
  // (float64 for float64 x); without for_backward those three are empty. plan names the kernel plan: "stepwise"
  // (every device), "fused" (CUDA and CPU; on CPU also "fused-avx2", "fused-sse2"); the caller chooses (lstm_attn/plans.py), and the backward takes the forward's.
  m.def(
      "lstm_fwd(Tensor x, Tensor[] weights, Tensor h0, Tensor c0, Tensor? dropout_mask, bool for_backward, "
      "str plan) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor hidden, Tensor cell, Tensor gates)");
  m.def(
      "lstm_bwd(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor[] weights, Tensor h0, "
      "Tensor c0, Tensor? dropout_mask, Tensor hidden, Tensor cell, Tensor gates, str plan) -> (Tensor grad_x, "
      "Tensor[] grad_weights, Tensor grad_h0, Tensor grad_c0)");
}
