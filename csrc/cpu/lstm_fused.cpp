// The fused CPU LSTM plan (lstm_fused.h): the per-ISA float32 kernels, the scalar path for the other dtypes, and
// the layer runners handed to lstm.h's shared loop.
#include "cpu/lstm_fused.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_utils.h"
#include "lstm_cell.h"

namespace lstm_attn::lstm {
namespace {

// One layer's forward in raw pointers (rows of B, time-major, contiguous): proj (T, B, 4H) with both biases;
// hidden (T + 1, B, H) with h0 first, filled; gates (T, B, 4H) and cell (T, B, H) filled unless null; c0, c_n (B, H).
struct FusedForward {
  int64_t B, T, H;
  const float* proj;
  float* hidden;
  float* gates;
  float* cell;
  const float* c0;
  float* c_n;
  const float* w_packed;
};

// One layer's backward: dy (T, B, H) the gradient of h from outside the layer; gates, cell, c0 as saved; d_pre
// (T, B, 4H), grad_h0 and grad_c0 (B, H) filled.
struct FusedBackward {
  int64_t B, T, H;
  const float* dy;
  const float* gates;
  const float* cell;
  const float* c0;
  const float* grad_h_n;
  const float* grad_c_n;
  float* d_pre;
  float* grad_h0;
  float* grad_c0;
  const float* w_packed;
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LSTM_ATTN_FUSED_X86 1
#include <immintrin.h>
#endif

#ifdef LSTM_ATTN_FUSED_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
namespace avx512 {
constexpr int kW = 16;
constexpr int kMR = 6;  // 24 accumulators of 32 registers
using V = float __attribute__((vector_size(64)));
using VI = int32_t __attribute__((vector_size(64)));
C10_ALWAYS_INLINE V bcast(float x) { return (V)_mm512_set1_ps(x); }
C10_ALWAYS_INLINE V fmadd(V a, V b, V c) { return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#include "cpu/lstm_fused_simd.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kW = 8;
constexpr int kMR = 3;  // 12 accumulators of 16 registers; W_hh is an FMA's memory operand
using V = float __attribute__((vector_size(32)));
using VI = int32_t __attribute__((vector_size(32)));
C10_ALWAYS_INLINE V bcast(float x) { return (V)_mm256_set1_ps(x); }
C10_ALWAYS_INLINE V fmadd(V a, V b, V c) { return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#include "cpu/lstm_fused_simd.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

// The baseline: any x86-64 (SSE2), or any other CPU through GNU vectors.
namespace sse2 {
constexpr int kW = 4;
constexpr int kMR = 2;
using V = float __attribute__((vector_size(16)));
using VI = int32_t __attribute__((vector_size(16)));
C10_ALWAYS_INLINE V bcast(float x) { return V{x, x, x, x}; }
C10_ALWAYS_INLINE V fmadd(V a, V b, V c) { return a * b + c; }
#include "cpu/lstm_fused_simd.inc"
}  // namespace sse2

struct Kernels {
  const char* name;
  int64_t (*forward_pack_size)(int64_t);
  void (*pack_forward)(const float*, int64_t, float*);
  int64_t (*backward_pack_size)(int64_t);
  void (*pack_backward)(const float*, int64_t, float*);
  int64_t (*padded)(int64_t);
  void (*forward_rows)(const FusedForward&, int64_t, int64_t, float*);
  void (*backward_rows)(const FusedBackward&, int64_t, int64_t, float*);
};

#define LSTM_ATTN_KERNELS(ns)                                                                                  \
  Kernels {                                                                                                    \
    #ns, &ns::forward_pack_size, &ns::pack_forward, &ns::backward_pack_size, &ns::pack_backward, &ns::padded, \
        &ns::forward_rows, &ns::backward_rows                                                                  \
  }

// The best kernels this CPU runs (the OS must also save the registers: __builtin_cpu_supports checks XCR0), capped
// by LSTM_ATTN_CPU_ISA, read on every call so that a test can set it.
const Kernels& kernels() {
  static const Kernels baseline = LSTM_ATTN_KERNELS(sse2);
#ifdef LSTM_ATTN_FUSED_X86
  static const Kernels k_avx512 = LSTM_ATTN_KERNELS(avx512), k_avx2 = LSTM_ATTN_KERNELS(avx2);
  static const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* cap = std::getenv("LSTM_ATTN_CPU_ISA");
  const bool allow_avx512 = cap == nullptr || *cap == '\0' || std::strcmp(cap, "avx512") == 0;
  const bool allow_avx2 = allow_avx512 || std::strcmp(cap, "avx2") == 0;
  TORCH_CHECK(allow_avx2 || std::strcmp(cap, "sse2") == 0, "LSTM_ATTN_CPU_ISA must be avx512, avx2 or sse2, got '",
              cap, "'");
  if (has_avx512 && allow_avx512) return k_avx512;
  if (has_avx2 && allow_avx2) return k_avx2;
#endif
  return baseline;
}

#undef LSTM_ATTN_KERNELS

// Each thread takes one contiguous slice of the batch for the whole sequence.
template <typename F>
void over_batch_slices(int64_t B, const F& f) {
  at::parallel_for(0, B, 1, f);
}

at::Tensor packed(const at::Tensor& w_hh, int64_t (*size)(int64_t), void (*pack)(const float*, int64_t, float*)) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t H = w.size(1);
  at::Tensor out = at::empty({size(H)}, w.options());
  pack(w.data_ptr<float>(), H, out.data_ptr<float>());
  return out;
}

void forward_float(ForwardState& f, int64_t l, const at::Tensor& proj) {
  const Kernels& k = kernels();
  const int64_t B = f.B, T = f.T, H = f.H;
  const at::Tensor w = packed(f.w[4 * l + 1], k.forward_pack_size, k.pack_forward);
  const FusedForward a{B, T, H, proj.data_ptr<float>(), f.hidden[l].data_ptr<float>(),
                       f.keep ? f.gates[l].data_ptr<float>() : nullptr, f.keep ? f.cell[l].data_ptr<float>() : nullptr,
                       f.c0[l].data_ptr<float>(), f.c_n[l].data_ptr<float>(), w.data_ptr<float>()};
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto c = cpu::scratch<float>((b1 - b0) * k.padded(H));
    k.forward_rows(a, b0, b1, c.get());
  });
}

void backward_float(BackwardState& b, int64_t l, const at::Tensor& dy) {
  const ForwardState& f = b.f;
  const Kernels& k = kernels();
  const int64_t B = f.B, T = f.T, H = f.H;
  const at::Tensor w = packed(f.w[4 * l + 1], k.backward_pack_size, k.pack_backward);
  const FusedBackward a{B, T, H, dy.data_ptr<float>(), f.gates[l].data_ptr<float>(), f.cell[l].data_ptr<float>(),
                        f.c0[l].data_ptr<float>(), b.grad_h_n[l].data_ptr<float>(), b.grad_c_n[l].data_ptr<float>(),
                        b.d_pre[l].data_ptr<float>(), b.grad_h0[l].data_ptr<float>(), b.grad_c0[l].data_ptr<float>(),
                        w.data_ptr<float>()};
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto dc = cpu::scratch<float>((b1 - b0) * k.padded(H));
    k.backward_rows(a, b0, b1, dc.get());
  });
}

// The other dtypes: the same slices and order of work in scalar code, the cell by csrc/lstm_cell.h itself.
template <typename scalar_t>
void forward_scalar(ForwardState& f, int64_t l, const at::Tensor& proj) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = f.B, T = f.T, H = f.H;
  const at::Tensor w_hh = f.w[4 * l + 1].to(proj.scalar_type()).contiguous();
  const acc_t* w = w_hh.data_ptr<acc_t>();
  const acc_t* pj = proj.data_ptr<acc_t>();
  scalar_t* hidden = f.hidden[l].data_ptr<scalar_t>();
  acc_t* gates = f.keep ? f.gates[l].data_ptr<acc_t>() : nullptr;
  acc_t* cells = f.keep ? f.cell[l].data_ptr<acc_t>() : nullptr;
  const scalar_t* c0 = f.c0[l].data_ptr<scalar_t>();
  scalar_t* c_n = f.c_n[l].data_ptr<scalar_t>();
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto c = cpu::scratch<acc_t>((b1 - b0) * H);
    const auto pre = cpu::scratch<acc_t>(4 * H);
    for (int64_t i = 0; i < (b1 - b0) * H; ++i) c[i] = static_cast<acc_t>(c0[b0 * H + i]);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t bb = b0; bb < b1; ++bb) {
        const scalar_t* h_prev = hidden + (t * B + bb) * H;
        for (int64_t j = 0; j < 4 * H; ++j) {
          acc_t s = pj[(t * B + bb) * 4 * H + j];
          for (int64_t q = 0; q < H; ++q) s += static_cast<acc_t>(h_prev[q]) * w[j * H + q];
          pre[j] = s;
        }
        acc_t* cb = c.get() + (bb - b0) * H;
        for (int64_t u = 0; u < H; ++u) {
          const auto r = cell::forward(pre[u], pre[H + u], pre[2 * H + u], pre[3 * H + u], cb[u]);
          cb[u] = r.c;
          hidden[((t + 1) * B + bb) * H + u] = static_cast<scalar_t>(r.h);
          if (gates == nullptr) continue;
          acc_t* g = gates + (t * B + bb) * 4 * H + u;
          g[0] = r.i;
          g[H] = r.f;
          g[2 * H] = r.g;
          g[3 * H] = r.o;
          cells[(t * B + bb) * H + u] = r.c;
        }
      }
    for (int64_t i = 0; i < (b1 - b0) * H; ++i) c_n[b0 * H + i] = static_cast<scalar_t>(c[i]);
  });
}

template <typename scalar_t>
void backward_scalar(BackwardState& b, int64_t l, const at::Tensor& dy_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const ForwardState& f = b.f;
  const int64_t B = f.B, T = f.T, H = f.H;
  const at::Tensor w_hh = f.w[4 * l + 1].to(dy_t.scalar_type()).contiguous();
  const acc_t* w = w_hh.data_ptr<acc_t>();
  const acc_t* dy = dy_t.data_ptr<acc_t>();
  const acc_t* gates = f.gates[l].data_ptr<acc_t>();
  const acc_t* cells = f.cell[l].data_ptr<acc_t>();
  const at::Tensor c0_acc = f.c0[l].to(dy_t.scalar_type()).contiguous();
  const acc_t* c0 = c0_acc.data_ptr<acc_t>();
  const scalar_t* grad_h_n = b.grad_h_n[l].data_ptr<scalar_t>();
  const scalar_t* grad_c_n = b.grad_c_n[l].data_ptr<scalar_t>();
  scalar_t* d_pre = b.d_pre[l].data_ptr<scalar_t>();
  scalar_t* grad_h0 = b.grad_h0[l].data_ptr<scalar_t>();
  scalar_t* grad_c0 = b.grad_c0[l].data_ptr<scalar_t>();
  // dh = d_{s+1} W_hh for one row, k in order.
  const auto recurrent = [&](const scalar_t* d, acc_t* dh) {
    std::fill(dh, dh + H, acc_t(0));
    for (int64_t k = 0; k < 4 * H; ++k)
      for (int64_t u = 0; u < H; ++u) dh[u] += static_cast<acc_t>(d[k]) * w[k * H + u];
  };
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto dc = cpu::scratch<acc_t>((b1 - b0) * H);
    const auto dh = cpu::scratch<acc_t>(H);
    for (int64_t i = 0; i < (b1 - b0) * H; ++i) dc[i] = static_cast<acc_t>(grad_c_n[b0 * H + i]);
    for (int64_t s = T - 1; s >= 0; --s)
      for (int64_t bb = b0; bb < b1; ++bb) {
        if (s == T - 1) {
          for (int64_t u = 0; u < H; ++u) dh[u] = static_cast<acc_t>(grad_h_n[bb * H + u]);
        } else {
          recurrent(d_pre + ((s + 1) * B + bb) * 4 * H, dh.get());
        }
        const acc_t* g = gates + (s * B + bb) * 4 * H;
        const acc_t* c = cells + (s * B + bb) * H;
        const acc_t* cp = s > 0 ? cells + ((s - 1) * B + bb) * H : c0 + bb * H;
        scalar_t* out = d_pre + (s * B + bb) * 4 * H;
        acc_t* dcb = dc.get() + (bb - b0) * H;
        for (int64_t u = 0; u < H; ++u) {
          const acc_t dh_u = dy[(s * B + bb) * H + u] + dh[u];
          const auto r = cell::backward(g[u], g[H + u], g[2 * H + u], g[3 * H + u], c[u], cp[u], dh_u, dcb[u]);
          out[u] = static_cast<scalar_t>(r.d_i);
          out[H + u] = static_cast<scalar_t>(r.d_f);
          out[2 * H + u] = static_cast<scalar_t>(r.d_g);
          out[3 * H + u] = static_cast<scalar_t>(r.d_o);
          dcb[u] = r.dc_carry;
        }
      }
    for (int64_t bb = b0; bb < b1; ++bb) {
      recurrent(d_pre + bb * 4 * H, dh.get());
      for (int64_t u = 0; u < H; ++u) grad_h0[bb * H + u] = static_cast<scalar_t>(dh[u]);
    }
    for (int64_t i = 0; i < (b1 - b0) * H; ++i) grad_c0[b0 * H + i] = static_cast<scalar_t>(dc[i]);
  });
}

void fused_forward(ForwardState& f, int64_t l, int64_t, const at::Tensor& proj) {
  if (f.x.scalar_type() == at::kFloat) return forward_float(f, l, proj);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, f.x.scalar_type(), "lstm_fused_forward_cpu",
                                  [&] { forward_scalar<scalar_t>(f, l, proj); });
}

void fused_backward(BackwardState& b, int64_t l, int64_t, const at::Tensor& dy) {
  const at::Tensor dy_c = dy.contiguous();
  if (b.f.x.scalar_type() == at::kFloat) return backward_float(b, l, dy_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, b.f.x.scalar_type(), "lstm_fused_backward_cpu",
                                  [&] { backward_scalar<scalar_t>(b, l, dy_c); });
}

}  // namespace

Plan fused_plan() { return {1, &fused_forward, &fused_backward}; }

std::string fused_isa() { return kernels().name; }

}  // namespace lstm_attn::lstm
