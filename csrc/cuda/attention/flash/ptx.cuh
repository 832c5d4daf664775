// The sm_80+ instructions the flash kernels are built from, each a thin inline-PTX wrapper: cp.async copies into
// shared memory (zero-filling what lies outside the tensor), ldmatrix loads of 8x8 16-bit tiles, the m16n8k16 tensor-core
// product with float32 accumulators, and the global-memory release/acquire pair and reduction that order the
// backward's dQ sums.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A (16 x 16, row-major) four 32-bit registers of two 16-bit values: a[0] = (g, 2t..2t+1), a[1] = (g + 8, 2t..),
//                          a[2] = (g, 2t + 8..), a[3] = (g + 8, 2t + 8..)
//   B (16 x 8, "col")      two registers: b[0] = (k = 2t..2t+1, n = g), b[1] = (k = 2t + 8.., n = g)
//   C (16 x 8, float32)    four floats: c[0..1] = (g, 2t..2t+1), c[2..3] = (g + 8, 2t..2t+1)
// so a row of C lives in the four lanes of a quad, and the C fragments of two n-neighbouring 16 x 8 products are,
// once rounded to 16 bits, the A fragment of a product that takes them as its left operand (FlashAttention-2's P).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace lstm_attn::gpu::flash {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, of which the first `src_bytes` (0 or 16) are read and the rest zero-filled. Bypasses L1
// (.cg): every tile is read once per block.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(src_bytes));
}

// 4 bytes, for the per-row statistics.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i, and register i receives matrix i's
// (row g, columns 2t..2t+1) -- or, transposed, (rows 2t..2t+1, column g).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// c += a * b, 16 x 8 x 16, float32 accumulators; T is __half or __nv_bfloat16.
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// c0 += a * b[0..1] and c1 += a * b[2..3]: the B fragments of two n-neighbouring 16 x 8 blocks, as one ldmatrix_x4
// loads them.
template <class T>
__device__ __forceinline__ void mma_two_blocks(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[4]) {
  mma_16816<T>(c0, a, {b[0], b[1]});
  mma_16816<T>(c1, a, {b[2], b[3]});
}

// Two floats rounded to T (round to nearest even) in one 32-bit register, the first in the low half.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// *p += x at the L2, not returning the old value.
__device__ __forceinline__ void red_add(float* p, float x) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(x) : "memory");
}

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void add_release(int* p, int x) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(x) : "memory");
}

}  // namespace lstm_attn::gpu::flash
