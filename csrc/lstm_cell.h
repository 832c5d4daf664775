// The LSTM cell's arithmetic for one (batch row, hidden unit), forward and backward: the one definition that the
// CPU loop (csrc/cpu/lstm.cpp), the CUDA step kernels and the fused CUDA kernels (csrc/cuda/lstm/) all call, so that
// the CPU tests check the same operations in the same order as the GPU runs them. acc_t is the accumulation type
// (float for float32, bfloat16 and float16; double for float64): everything here stays in it, and rounding to the
// storage dtype happens at the callers, at the places the comments there name.
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__CUDACC__)
#define LSTM_ATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LSTM_ATTN_HOST_DEVICE inline
#endif

namespace lstm_attn::cell {

template <class acc_t>
LSTM_ATTN_HOST_DEVICE acc_t exp_(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) return expf(x);
  else return exp(x);
}

template <class acc_t>
LSTM_ATTN_HOST_DEVICE acc_t tanh_(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) return tanhf(x);
  else return tanh(x);
}

// 1 / (1 + e^-x): e^-x overflows to inf for x < -88 (float), which gives exactly 0; NaN stays NaN.
template <class acc_t>
LSTM_ATTN_HOST_DEVICE acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_(-x));
}

// The gates (i, f, g, o after their activations), c_t and h_t from the four preactivations and c_{t-1}.
template <class acc_t>
struct Forward {
  acc_t i, f, g, o, c, h;
};

template <class acc_t>
LSTM_ATTN_HOST_DEVICE Forward<acc_t> forward(acc_t pre_i, acc_t pre_f, acc_t pre_g, acc_t pre_o, acc_t c_prev) {
  Forward<acc_t> r;
  r.i = sigmoid(pre_i);
  r.f = sigmoid(pre_f);
  r.g = tanh_(pre_g);
  r.o = sigmoid(pre_o);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

// The preactivation gradients of step t, and the cell-state gradient carried to step t - 1 (dc_t * f_t), from the
// step's saved gates, c_t, c_{t-1}, the total gradient of h_t (from the output, the layer above and step t + 1) and
// the carry from step t + 1 (dc_{t+1} * f_{t+1}; at t = T - 1, the gradient of c_n).
template <class acc_t>
struct Backward {
  acc_t d_i, d_f, d_g, d_o, dc_carry;
};

template <class acc_t>
LSTM_ATTN_HOST_DEVICE Backward<acc_t> backward(acc_t i, acc_t f, acc_t g, acc_t o, acc_t c, acc_t c_prev, acc_t dh,
                                               acc_t dc_carry) {
  const acc_t tc = tanh_(c);
  const acc_t dc = dc_carry + dh * o * (acc_t(1) - tc * tc);
  Backward<acc_t> r;
  r.d_i = dc * g * i * (acc_t(1) - i);
  r.d_f = dc * c_prev * f * (acc_t(1) - f);
  r.d_g = dc * i * (acc_t(1) - g * g);
  r.d_o = dh * tc * o * (acc_t(1) - o);
  r.dc_carry = dc * f;
  return r;
}

}  // namespace lstm_attn::cell
