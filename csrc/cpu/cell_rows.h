// csrc/lstm_cell.h over one batch row of H units, for the CPU plans' scalar loops (lstm.cpp's step kernels and the
// fused plan's path for float64 and 16-bit). Gate rows hold i, f, g, o at [0, H), [H, 2H), [2H, 3H), [3H, 4H).
#pragma once

#include <cstdint>

#include "lstm_cell.h"

namespace lstm_attn::cpu {

// pre: the four preactivations in, the gates (after activation) out, in place; c_prev in; c and h (the dtype) out.
// c may be c_prev (each unit reads its own before writing it).
template <typename acc_t, typename scalar_t>
inline void cell_forward_row(int64_t H, acc_t* pre, const acc_t* c_prev, acc_t* c, scalar_t* h) {
  for (int64_t u = 0; u < H; ++u) {
    const auto r = cell::forward(pre[u], pre[H + u], pre[2 * H + u], pre[3 * H + u], c_prev[u]);
    pre[u] = r.i;
    pre[H + u] = r.f;
    pre[2 * H + u] = r.g;
    pre[3 * H + u] = r.o;
    c[u] = r.c;
    h[u] = static_cast<scalar_t>(r.h);
  }
}

// gates, c, c_prev: the step's saved values; dh the total gradient of h_t; dc the carry in and out, in place; d_pre
// the preactivation gradients out, rounded to the dtype.
template <typename acc_t, typename scalar_t>
inline void cell_backward_row(int64_t H, const acc_t* gates, const acc_t* c, const acc_t* c_prev, const acc_t* dh,
                              acc_t* dc, scalar_t* d_pre) {
  for (int64_t u = 0; u < H; ++u) {
    const auto r = cell::backward(gates[u], gates[H + u], gates[2 * H + u], gates[3 * H + u], c[u], c_prev[u], dh[u],
                                  dc[u]);
    d_pre[u] = static_cast<scalar_t>(r.d_i);
    d_pre[H + u] = static_cast<scalar_t>(r.d_f);
    d_pre[2 * H + u] = static_cast<scalar_t>(r.d_g);
    d_pre[3 * H + u] = static_cast<scalar_t>(r.d_o);
    dc[u] = r.dc_carry;
  }
}

}  // namespace lstm_attn::cpu
