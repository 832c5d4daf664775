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
#include <string_view>
#include <vector>

#include "cpu/cpu_utils.h"
#include "cpu/cell_rows.h"
#include "cpu/workspace_allocator.h"

namespace lstm_attn::lstm {
namespace {

// Every layer's forward in raw pointers (contiguous; time-major but x and output): x (B, T, I); bias (L, 4H)
// b_ih + b_hh; mask (L - 1, T, B, H) or null; hidden (L, T + 1, B, H) with h0 first, filled, or null (then the
// steps' h stay in scratch); output (B, T, H) filled; gates (L, T, B, 4H) and cell (L, T, B, H) filled unless
// null; h0, c0, h_n, c_n (L, B, H); w_packed[l] layer l's [W_ih; W_hh] packed by pack_forward.
struct FusedForward {
  int64_t B, T, H, L, I;
  const float* x;
  const float* bias;
  const float* mask;
  float* hidden;
  float* output;
  float* gates;
  float* cell;
  const float* h0;
  const float* c0;
  float* h_n;
  float* c_n;
  const float* const* w_packed;
};

// Every layer's backward: dy the output's gradient, step t of row b at dy + t * dy_t + b * dy_b; mask, gates, cell, c0 as in the forward; grad_h_n,
// grad_c_n, grad_h0, grad_c0 (L, B, H); d_pre (L, T, B, 4H) filled; w_hh_packed[l], w_ih_packed[l] (l >= 1) by
// pack_backward.
struct FusedBackward {
  int64_t B, T, H, L;
  const float* dy;
  int64_t dy_t, dy_b;
  const float* mask;
  const float* gates;
  const float* cell;
  const float* c0;
  const float* grad_h_n;
  const float* grad_c_n;
  float* d_pre;
  float* grad_h0;
  float* grad_c0;
  const float* const* w_hh_packed;
  const float* const* w_ih_packed;
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
C10_ALWAYS_INLINE V recip(V d) {
  const V r = (V)_mm512_rcp14_ps((__m512)d);  // 2^-14, squared by the Newton step
  return r * (2.0f - d * r);
}
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
C10_ALWAYS_INLINE V recip(V d) {
  const V r = (V)_mm256_rcp_ps((__m256)d);  // 1.5 * 2^-12, squared by the Newton step
  return r * (2.0f - d * r);
}
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
C10_ALWAYS_INLINE V recip(V d) { return 1.0f / d; }
#include "cpu/lstm_fused_simd.inc"
}  // namespace sse2

struct Kernels {
  const char* name;
  int64_t (*forward_pack_size)(int64_t k1, int64_t H);
  void (*pack_forward)(const float* w_ih, int64_t k1, const float* w_hh, int64_t H, float* out);
  int64_t (*backward_pack_size)(int64_t H);
  void (*pack_backward)(const float* w, int64_t H, float* out);
  int64_t (*forward_scratch)(int64_t L, int64_t rows, int64_t H, bool rolling);
  int64_t (*backward_scratch)(int64_t L, int64_t rows, int64_t H);
  void (*forward_rows)(const FusedForward&, int64_t b0, int64_t b1, float* scratch);
  void (*backward_rows)(const FusedBackward&, int64_t b0, int64_t b1, float* scratch);
};

#define LSTM_ATTN_KERNELS(ns)                                                                           \
  Kernels {                                                                                             \
    #ns, &ns::forward_pack_size, &ns::pack_forward, &ns::backward_pack_size, &ns::pack_backward,       \
        &ns::forward_scratch, &ns::backward_scratch, &ns::forward_rows, &ns::backward_rows              \
  }

// The best kernels this CPU runs (the OS must also save the registers: __builtin_cpu_supports checks XCR0), at most
// those of `cap` ("" for no cap): plans "fused-avx2" and "fused-sse2" run the narrower kernels on a wider CPU.
const Kernels& kernels(std::string_view cap) {
  static const Kernels baseline = LSTM_ATTN_KERNELS(sse2);
#ifdef LSTM_ATTN_FUSED_X86
  static const Kernels k_avx512 = LSTM_ATTN_KERNELS(avx512), k_avx2 = LSTM_ATTN_KERNELS(avx2);
  static const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (cap.empty() && has_avx512) return k_avx512;
  if ((cap.empty() || cap == "avx2") && has_avx2) return k_avx2;
#endif
  TORCH_CHECK(cap != "avx2", "plan 'fused-avx2' needs a CPU with AVX2 and FMA");
  return baseline;
}

#undef LSTM_ATTN_KERNELS

// Each thread takes one contiguous slice of the batch for the whole sequence.
template <typename F>
void over_batch_slices(int64_t B, const F& f) {
  at::parallel_for(0, B, 1, f);
}

const float* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

void forward_float(const Kernels& k, ForwardState& f) {
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H, I = f.x.size(2);
  std::vector<at::Tensor> packs;
  std::vector<const float*> w;
  std::vector<at::Tensor> biases;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor w_ih = f.w[4 * l].contiguous(), w_hh = f.w[4 * l + 1].contiguous();
    const int64_t k1 = w_ih.size(1);
    packs.push_back(at::empty({k.forward_pack_size(k1, H)}, w_hh.options()));
    k.pack_forward(w_ih.data_ptr<float>(), k1, w_hh.data_ptr<float>(), H, packs.back().data_ptr<float>());
    w.push_back(packs.back().data_ptr<float>());
    biases.push_back(f.w[4 * l + 2] + f.w[4 * l + 3]);
  }
  const at::Tensor bias = at::stack(biases);
  float* hidden = f.hidden.numel() > 0 ? f.hidden.data_ptr<float>() : nullptr;
  const FusedForward a{B, T, H, L, I, f.x.data_ptr<float>(), ptr(bias), f.mask ? ptr(*f.mask) : nullptr,
                       hidden, f.output.numel() ? f.output.data_ptr<float>() : nullptr, f.keep ? f.gates.data_ptr<float>() : nullptr,
                       f.keep ? f.cell.data_ptr<float>() : nullptr, f.h0.data_ptr<float>(), f.c0.data_ptr<float>(),
                       f.h_n.data_ptr<float>(), f.c_n.data_ptr<float>(), w.data()};
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto scratch = cpu::scratch<float>(k.forward_scratch(L, b1 - b0, H, hidden == nullptr));
    k.forward_rows(a, b0, b1, scratch.get());
  });
}

void backward_float(const Kernels& k, BackwardState& b, const at::Tensor& dy) {
  const ForwardState& f = b.f;
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H;
  std::vector<at::Tensor> packs;
  std::vector<const float*> w_hh(L), w_ih(L);
  const auto pack = [&](const at::Tensor& weight) {
    packs.push_back(at::empty({k.backward_pack_size(H)}, weight.options()));
    k.pack_backward(weight.contiguous().data_ptr<float>(), H, packs.back().data_ptr<float>());
    return packs.back().data_ptr<float>();
  };
  for (int64_t l = 0; l < L; ++l) {
    w_hh[l] = pack(f.w[4 * l + 1]);
    w_ih[l] = l > 0 ? pack(f.w[4 * l]) : nullptr;
  }
  const FusedBackward a{B, T, H, L, dy.data_ptr<float>(), dy.stride(0), dy.stride(1), f.mask ? ptr(*f.mask) : nullptr, ptr(f.gates),
                        ptr(f.cell), ptr(f.c0), ptr(b.grad_h_n), ptr(b.grad_c_n), b.d_pre.data_ptr<float>(),
                        b.grad_h0.data_ptr<float>(), b.grad_c0.data_ptr<float>(), w_hh.data(), w_ih.data()};
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const auto scratch = cpu::scratch<float>(k.backward_scratch(L, b1 - b0, H));
    k.backward_rows(a, b0, b1, scratch.get());
  });
}

// The other dtypes: the same slices and order of work in scalar code, the cell by csrc/lstm_cell.h itself.
template <typename scalar_t>
struct ScalarWeights {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<at::Tensor> keep;
  std::vector<const acc_t*> w_ih, w_hh, bias;  // (4H, I_l), (4H, H) and b_ih + b_hh (4H,) in acc

  ScalarWeights(const ForwardState& f, at::ScalarType acc) {
    const auto add = [&](const at::Tensor& t) {
      keep.push_back(t.to(acc).contiguous());
      return keep.back().data_ptr<acc_t>();
    };
    for (int64_t l = 0; l < f.L; ++l) {
      w_ih.push_back(add(f.w[4 * l]));
      w_hh.push_back(add(f.w[4 * l + 1]));
      bias.push_back(add(f.w[4 * l + 2].to(acc) + f.w[4 * l + 3].to(acc)));
    }
  }
};

template <typename scalar_t>
void forward_scalar(ForwardState& f) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H, I = f.x.size(2);
  const ScalarWeights<scalar_t> w(f, acc_dtype(f.x.scalar_type()));
  const scalar_t* x = f.x.data_ptr<scalar_t>();
  // Without a hidden to fill (inference), one of its own: these dtypes are not the fast path.
  at::Tensor hidden_t = f.hidden;
  if (hidden_t.numel() == 0) {
    hidden_t = at::empty({L, T + 1, B, H}, f.x.options());
    hidden_t.select(1, 0).copy_(f.h0);
  }
  scalar_t* hidden = hidden_t.data_ptr<scalar_t>();
  const scalar_t* mask = f.mask ? f.mask->data_ptr<scalar_t>() : nullptr;
  acc_t* gates = f.keep ? f.gates.data_ptr<acc_t>() : nullptr;
  acc_t* cells = f.keep ? f.cell.data_ptr<acc_t>() : nullptr;
  const scalar_t* c0 = f.c0.data_ptr<scalar_t>();
  scalar_t* c_n = f.c_n.data_ptr<scalar_t>();
  const auto h_at = [&](int64_t l, int64_t t, int64_t bb) { return hidden + ((l * (T + 1) + t) * B + bb) * H; };
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    const auto c = cpu::scratch<acc_t>(L * rows * H);
    const auto pre = cpu::scratch<acc_t>(4 * H);
    const auto in = cpu::scratch<acc_t>(std::max(H, I));
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < rows * H; ++i) c[l * rows * H + i] = static_cast<acc_t>(c0[(l * B + b0) * H + i]);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t l = 0; l < L; ++l)
        for (int64_t bb = b0; bb < b1; ++bb) {
          const auto product = [&](const auto* a, const acc_t* weight, int64_t K) {
            for (int64_t j = 0; j < 4 * H; ++j)
              for (int64_t q = 0; q < K; ++q) pre[j] += static_cast<acc_t>(a[q]) * weight[j * K + q];
          };
          std::copy_n(w.bias[l], 4 * H, pre.get());
          if (l == 0) {
            product(x + (bb * T + t) * I, w.w_ih[0], I);
          } else {
            const scalar_t* below = h_at(l - 1, t + 1, bb);
            const scalar_t* m = mask ? mask + (((l - 1) * T + t) * B + bb) * H : nullptr;
            // Dropped as torch.dropout drops: h * mask in the dtype.
            for (int64_t q = 0; q < H; ++q) in[q] = static_cast<acc_t>(m ? static_cast<scalar_t>(below[q] * m[q]) : below[q]);
            product(in.get(), w.w_ih[l], H);
          }
          product(h_at(l, t, bb), w.w_hh[l], H);
          acc_t* cb = c.get() + (l * rows + bb - b0) * H;
          cpu::cell_forward_row(H, pre.get(), cb, cb, h_at(l, t + 1, bb));
          if (gates != nullptr) {
            std::copy_n(pre.get(), 4 * H, gates + ((l * T + t) * B + bb) * 4 * H);
            std::copy_n(cb, H, cells + ((l * T + t) * B + bb) * H);
          }
        }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < rows * H; ++i) c_n[(l * B + b0) * H + i] = static_cast<scalar_t>(c[l * rows * H + i]);
  });
  f.output.copy_(hidden_t[L - 1].slice(0, 1).transpose(0, 1));
  f.h_n.copy_(hidden_t.select(1, T));
}

template <typename scalar_t>
void backward_scalar(BackwardState& b, const at::Tensor& dy_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const ForwardState& f = b.f;
  const int64_t L = f.L, B = f.B, T = f.T, H = f.H;
  const ScalarWeights<scalar_t> w(f, dy_t.scalar_type());
  const acc_t* dy = dy_t.data_ptr<acc_t>();
  const scalar_t* mask = f.mask ? f.mask->data_ptr<scalar_t>() : nullptr;
  const acc_t* gates = f.gates.data_ptr<acc_t>();
  const acc_t* cells = f.cell.data_ptr<acc_t>();
  const at::Tensor c0_acc = f.c0.to(dy_t.scalar_type()).contiguous();
  const acc_t* c0 = c0_acc.data_ptr<acc_t>();
  const scalar_t* grad_h_n = b.grad_h_n.data_ptr<scalar_t>();
  const scalar_t* grad_c_n = b.grad_c_n.data_ptr<scalar_t>();
  scalar_t* d_pre = b.d_pre.data_ptr<scalar_t>();
  scalar_t* grad_h0 = b.grad_h0.data_ptr<scalar_t>();
  scalar_t* grad_c0 = b.grad_c0.data_ptr<scalar_t>();
  const auto d_at = [&](int64_t l, int64_t t, int64_t bb) { return d_pre + ((l * T + t) * B + bb) * 4 * H; };
  // out = d W for one row: d (4H) in the dtype, W (4H, H), k in order.
  const auto product = [&](const scalar_t* d, const acc_t* weight, acc_t* out) {
    std::fill(out, out + H, acc_t(0));
    for (int64_t k = 0; k < 4 * H; ++k)
      for (int64_t u = 0; u < H; ++u) out[u] += static_cast<acc_t>(d[k]) * weight[k * H + u];
  };
  over_batch_slices(B, [&](int64_t b0, int64_t b1) {
    const int64_t rows = b1 - b0;
    const auto dc = cpu::scratch<acc_t>(L * rows * H);
    const auto dh = cpu::scratch<acc_t>(H);
    const auto part = cpu::scratch<acc_t>(H);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < rows * H; ++i) dc[l * rows * H + i] = static_cast<acc_t>(grad_c_n[(l * B + b0) * H + i]);
    for (int64_t t = T - 1; t >= 0; --t)
      for (int64_t l = L - 1; l >= 0; --l)
        for (int64_t bb = b0; bb < b1; ++bb) {
          if (l == L - 1) {
            std::copy_n(dy + (t * B + bb) * H, H, dh.get());
          } else {
            product(d_at(l + 1, t, bb), w.w_ih[l + 1], dh.get());
            if (mask != nullptr)
              for (int64_t u = 0; u < H; ++u) dh[u] *= static_cast<acc_t>(mask[((l * T + t) * B + bb) * H + u]);
          }
          if (t == T - 1) {
            for (int64_t u = 0; u < H; ++u) dh[u] += static_cast<acc_t>(grad_h_n[(l * B + bb) * H + u]);
          } else {
            product(d_at(l, t + 1, bb), w.w_hh[l], part.get());
            for (int64_t u = 0; u < H; ++u) dh[u] += part[u];
          }
          const acc_t* g = gates + ((l * T + t) * B + bb) * 4 * H;
          const acc_t* c = cells + ((l * T + t) * B + bb) * H;
          const acc_t* cp = t > 0 ? c - B * H : c0 + (l * B + bb) * H;
          cpu::cell_backward_row(H, g, c, cp, dh.get(), dc.get() + (l * rows + bb - b0) * H, d_at(l, t, bb));
        }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t bb = b0; bb < b1; ++bb) {
        product(d_at(l, 0, bb), w.w_hh[l], dh.get());
        for (int64_t u = 0; u < H; ++u) grad_h0[(l * B + bb) * H + u] = static_cast<scalar_t>(dh[u]);
      }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < rows * H; ++i) grad_c0[(l * B + b0) * H + i] = static_cast<scalar_t>(dc[l * rows * H + i]);
  });
}

// One group holds every layer (lstm.h): the runners get l0 = 0 and n = L.
constexpr int64_t kAllLayers = int64_t(1) << 40;

ForwardGroup fused_forward(const Kernels& k) {
  return [&k](ForwardState& f, int64_t l0, int64_t n, const at::Tensor&) {
    TORCH_CHECK(l0 == 0 && n == f.L, "the fused CPU plan runs every layer in one group");
    if (f.x.scalar_type() == at::kFloat) return forward_float(k, f);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, f.x.scalar_type(), "lstm_fused_forward_cpu",
                                    [&] { forward_scalar<scalar_t>(f); });
  };
}

BackwardGroup fused_backward(const Kernels& k) {
  return [&k](BackwardState& b, int64_t l0, int64_t n, const at::Tensor& dy) {
    TORCH_CHECK(l0 == 0 && n == b.f.L, "the fused CPU plan runs every layer in one group");
    if (b.f.x.scalar_type() == at::kFloat) return backward_float(k, b, dy.stride(2) == 1 ? dy : dy.contiguous());
    const at::Tensor dy_c = dy.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, b.f.x.scalar_type(), "lstm_fused_backward_cpu",
                                    [&] { backward_scalar<scalar_t>(b, dy_c); });
  };
}

}  // namespace

Plan fused_plan(std::string_view isa_cap) {
  const Kernels& k = kernels(isa_cap);
  Plan plan{kAllLayers, fused_forward(k), fused_backward(k), /*own_input_projection=*/true, workspace_allocator(),
            /*own_io=*/true};
  return plan;
}

}  // namespace lstm_attn::lstm
