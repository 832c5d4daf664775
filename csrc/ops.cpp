// The schemas of lstm_attn's ops, defined once. Each device registers its kernels beside its own code:
// CPU in csrc/cpu/, CUDA in csrc/cuda/; autograd (device-independent) in csrc/autograd.cpp, where backward is
// written in terms of the *_bwd ops below. Fake (meta) rules are registered from Python (lstm_attn/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/tiles.h"

extern "C" {
// `import lstm_attn._C` loads this library, which runs the TORCH_LIBRARY registrations; the module itself
// exports nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lstm_attn, m) {
  // out = layer_norm(softmax(q k^T * scale) v + residual). Also returns what backward recomputes from:
  // attn = softmax(q k^T * scale) v (input dtype) and row statistics lse, mean, rstd (B, Tq): float32, or
  // float64 for float64 inputs.
  m.def(
      "attention_layernorm_fwd(Tensor q, Tensor k, Tensor v, Tensor residual, Tensor weight, Tensor bias, "
      "float eps, float scale) -> (Tensor out, Tensor attn, Tensor lse, Tensor mean, Tensor rstd)");
  m.def(
      "attention_layernorm_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor residual, Tensor weight, "
      "Tensor attn, Tensor lse, Tensor mean, Tensor rstd, float scale) -> (Tensor grad_q, Tensor grad_k, "
      "Tensor grad_v, Tensor grad_residual, Tensor grad_weight, Tensor grad_bias)");
  // pooled = sum_j softmax_j(x_j . u + c) x_j; lse (B,) is the log-sum-exp of those scores (float32; float64 for float64 x).
  m.def("softmax_pool_fwd(Tensor x, Tensor u, Tensor c) -> (Tensor pooled, Tensor lse)");
  m.def(
      "softmax_pool_bwd(Tensor grad_pooled, Tensor x, Tensor u, Tensor c, Tensor pooled, Tensor lse) -> "
      "(Tensor grad_x, Tensor grad_u, Tensor grad_c)");
  // The CPU kernels' tile sizes [query block, backward query block, key tile, min backward tasks], for tests
  // that must reach every tile boundary.
  m.def("cpu_attention_tiles() -> int[]", &lstm_attn::cpu::attention_tiles);
}
