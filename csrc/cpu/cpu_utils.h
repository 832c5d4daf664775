// Building blocks shared by the CPU kernels: the accumulation types, small row-major GEMMs, a vectorizable
// exp, fixed-order row reductions and a blocked transpose.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/native/CPUBlas.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

// The extension is compiled for the baseline ISA (SSE2 on x86-64) so that it loads on every CPU, and extension
// builds get no CPU_CAPABILITY, so at::vec would fall back to scalar loops. The elementwise loops of the
// kernels (exp, row reductions, LayerNorm) are therefore written as plain loops the compiler vectorizes (lane
// arrays, GNU generic vectors) and compiled once per ISA level, the best one picked when the library loads
// (GNU ifunc).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define LSTM_ATTN_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LSTM_ATTN_MULTIVERSION
#endif

namespace lstm_attn::cpu {

// float for float32/bfloat16/float16, double for float64.
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// The schema's row statistics (lse, LayerNorm mean and rstd) are kept in the accumulation type: float32 for
// float32/bfloat16/float16, float64 for float64 (float32 statistics would cap float64 gradients at ~1e-7).
template <typename acc_t>
using row_stat_t = acc_t;

inline at::ScalarType row_stat_dtype(at::ScalarType input) {
  return input == at::kDouble ? c10::CppTypeToScalarType<row_stat_t<double>>::value
                              : c10::CppTypeToScalarType<row_stat_t<float>>::value;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Asks for the cache lines of [p, p + bytes) ahead of use. The row loops that read inputs straight from
// memory (residual, attn, grad_out) do too little work per row to hide the latency otherwise.
template <typename T>
C10_ALWAYS_INLINE void prefetch(const T* p, int64_t count) {
#if defined(__GNUC__)
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < count * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(bytes + i);
#endif
}

// Uninitialised scratch memory for one parallel chunk of work.
template <typename T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// C (m x n, ldc) = A (m x k, lda) @ B (k x n, ldb), or C += A @ B; all row-major. Plain loops: float64 (there
// for exactness, not speed; libtorch exports no double GEMM to extensions), and float on a torch too old for
// the float brgemm.
template <typename T>
LSTM_ATTN_MULTIVERSION void gemm_loops(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                                       int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    if (!accumulate) std::fill(ci, ci + n, T(0));
    for (int64_t p = 0; p < k; ++p) {
      const T aip = a[i * lda + p];
      const T* bp = b + p * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
    }
  }
}

// float goes to torch's cpublas::brgemm: oneDNN's JIT micro-kernel where oneDNN reports the CPU's ISA fit for it,
// torch's BLAS sgemm elsewhere (decided inside torch at run time, per host: AVX2-only and AVX-512 machines take
// different code and round differently, within the parity tolerance; the result never depends on the thread count,
// which tests/test_host.py checks). Single-threaded, made for cache-sized tiles inside at::parallel_for. It takes
// no transposed operands, so the kernels stage K^T, Q^T and dO^T once per task instead.
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
#else
  gemm_loops(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
#endif
}

inline void gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b, int64_t ldb,
                 double* c, int64_t ldc, bool accumulate) {
  gemm_loops(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

// exp for the softmax tiles, where it is most of the elementwise work. std::exp does not vectorize without
// -ffast-math; this does. Cody-Waite reduction and Cephes' degree-5 polynomial: within 2 ulp of expf. The range
// limits are applied as bit masks, not as branches or clamps, so that the compiler cannot split the loop into
// paths (which stops vectorization): below -87 gives +0, above 88 gives inf, NaN stays NaN.
C10_ALWAYS_INLINE float softmax_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: x + kRound rounds x to an integer kept in the low bits
  const float t = x * kLog2e + kRound;
  const float n = t - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t n_bits;
  std::memcpy(&n_bits, &t, sizeof(n_bits));
  const uint32_t pow2_bits = (n_bits - 0x4B400000u + 127u) << 23;  // 2^n: n + bias in the exponent field
  float pow2;
  std::memcpy(&pow2, &pow2_bits, sizeof(pow2));
  const float e = p * pow2;
  uint32_t bits;
  std::memcpy(&bits, &e, sizeof(bits));
  const uint32_t keep = 0u - static_cast<uint32_t>(!(x < -87.0f));  // all ones unless x < -87 (NaN keeps)
  const uint32_t overflow = 0u - static_cast<uint32_t>(x > 88.0f);
  bits = (bits & keep & ~overflow) | (0x7F800000u & overflow);
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

C10_ALWAYS_INLINE double softmax_exp(double x) { return std::exp(x); }

// Row reductions over lane arrays: the compiler maps the lanes onto vector registers without reassociating
// anything, so the summation order is fixed by this code and results are bitwise reproducible.
constexpr int64_t kLanes = 16;

template <typename T>
C10_ALWAYS_INLINE T reduce_lanes_sum(T* lanes) {
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

// sum_{i < n} term(i)
template <typename T, typename F>
C10_ALWAYS_INLINE T lane_sum(int64_t n, const F& term) {
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(i + l);
  for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += term(i);
  return reduce_lanes_sum(lanes);
}

// max_{i < n} x[i], -inf for n = 0. NaN is skipped (a softmax still propagates it: exp(NaN - max) is NaN).
template <typename T>
C10_ALWAYS_INLINE T row_max(int64_t n, const T* x) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

#if defined(__GNUC__)
// GNU generic vectors: each clone of a caller compiles them to its own ISA's instructions.
using vec8f = float __attribute__((vector_size(32)));
using vec8i = int32_t __attribute__((vector_size(32)));

// The float max in generic vectors: compilers do not vectorize a float max reduction by themselves without
// -ffinite-math-only, and this one is on every score row.
C10_ALWAYS_INLINE float row_max(int64_t n, const float* x) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  vec8f m0 = {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf}, m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    vec8f a, b;
    std::memcpy(&a, x + i, sizeof(a));
    std::memcpy(&b, x + i + 8, sizeof(b));
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  m0 = m1 > m0 ? m1 : m0;
  float m = -kInf;
  for (int l = 0; l < 8; ++l) m = m0[l] > m ? m0[l] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// An 8 x 8 float transpose in registers (unpack/shuffle/permute on AVX2).
#if defined(__clang__)
#define LSTM_ATTN_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LSTM_ATTN_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, vec8i{__VA_ARGS__})
#endif

C10_ALWAYS_INLINE void transpose_8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  vec8f r[8], t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + i * ld_src, sizeof(vec8f));
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = LSTM_ATTN_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = LSTM_ATTN_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    u[i] = LSTM_ATTN_SHUFFLE8(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = LSTM_ATTN_SHUFFLE8(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = LSTM_ATTN_SHUFFLE8(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = LSTM_ATTN_SHUFFLE8(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const vec8f lo = LSTM_ATTN_SHUFFLE8(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const vec8f hi = LSTM_ATTN_SHUFFLE8(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(dst + i * ld_dst, &lo, sizeof(vec8f));
    std::memcpy(dst + (i + 4) * ld_dst, &hi, sizeof(vec8f));
  }
}
#undef LSTM_ATTN_SHUFFLE8
#endif

// dst (cols x rows, leading dim ld_dst) = src (rows x cols, leading dim ld_src)^T, converted to dst_t.
// float to float, the case on the float32 fast path, moves 8 x 8 blocks in registers, grouped by 16 x 16 so
// that whole cache lines are read and written.
template <typename src_t, typename dst_t>
LSTM_ATTN_MULTIVERSION void transpose(const src_t* __restrict__ src, int64_t rows, int64_t cols, int64_t ld_src,
                                      dst_t* __restrict__ dst, int64_t ld_dst) {
  int64_t rows_done = 0, cols_done = 0;
#if defined(__GNUC__)
  if constexpr (std::is_same_v<src_t, float> && std::is_same_v<dst_t, float>) {
    rows_done = rows / 8 * 8;
    cols_done = cols / 8 * 8;
    for (int64_t r0 = 0; r0 < rows_done; r0 += 16)
      for (int64_t c0 = 0; c0 < cols_done; c0 += 16)
        for (int64_t r = r0; r < std::min(r0 + 16, rows_done); r += 8)
          for (int64_t c = c0; c < std::min(c0 + 16, cols_done); c += 8)
            transpose_8x8(src + r * ld_src + c, ld_src, dst + c * ld_dst + r, ld_dst);
  }
#endif
  // The rest: the bottom rows below the blocks, then the right columns (all rows).
  for (int64_t c = 0; c < cols_done; ++c)
    for (int64_t r = rows_done; r < rows; ++r) dst[c * ld_dst + r] = static_cast<dst_t>(src[r * ld_src + c]);
  for (int64_t c = cols_done; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) dst[c * ld_dst + r] = static_cast<dst_t>(src[r * ld_src + c]);
}

}  // namespace lstm_attn::cpu
