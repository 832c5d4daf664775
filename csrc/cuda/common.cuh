// Helpers shared by lstm_attn's CUDA kernels: dtype conversion, warp-group reductions, and the one way every
// kernel is launched (dynamic shared memory above 48 KB opted into, launch errors surfaced at once).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <utility>

// bfloat16 and tf32 tensor-core instructions exist from sm_80 on: say so rather than fail deep inside mma.h.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "lstm_attn's CUDA kernels need sm_80 or newer: set TORCH_CUDA_ARCH_LIST to 8.0 or above"
#endif

namespace lstm_attn::gpu {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Every kernel declares __launch_bounds__(threads, kMinBlocksPerSm). Without an explicit minimum, ptxas was seen to cap
// registers at an occupancy step (96, 128, 168) and spill a few bytes; with it, it allocates what the kernel needs.
constexpr int kMinBlocksPerSm = 1;

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Shared-memory buffers start on 128-byte boundaries: WMMA needs 32, 16-byte vector stores need 16.
constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Reductions over aligned groups of `width` consecutive lanes (width a power of two <= 32). Every lane of the
// warp must call them (full mask); each lane gets its own group's result.
__device__ __forceinline__ float group_sum(float x, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float group_max(float x, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Lets `kernel` use `bytes` (> 48 KB) of dynamic shared memory on `device` (default: the current one): the opt-in
// each kernel needs above the 48 KB default. The device's limit is read once per device and the attribute set once
// per (kernel, device), not on every launch (launch.cu); a request beyond the limit is a clear error, not a failed
// launch.
void opt_in_dynamic_smem(const void* kernel, size_t bytes);
void opt_in_dynamic_smem(const void* kernel, size_t bytes, int device);

// A launch configuration of `grid` blocks in clusters of `cluster_size` (1: no cluster attribute). Not copied:
// config.attrs points into the object.
struct ClusterLaunch {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute cluster_dims[1] = {};
  ClusterLaunch(int grid, int cluster_size, int threads, size_t smem_bytes, cudaStream_t stream) {
    config.gridDim = dim3(static_cast<unsigned>(grid));
    config.blockDim = dim3(static_cast<unsigned>(threads));
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    if (cluster_size > 1) {
      cluster_dims[0].id = cudaLaunchAttributeClusterDimension;
      cluster_dims[0].val.clusterDim.x = static_cast<unsigned>(cluster_size);
      cluster_dims[0].val.clusterDim.y = 1;
      cluster_dims[0].val.clusterDim.z = 1;
      config.attrs = cluster_dims;
      config.numAttrs = 1;
    }
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// How many clusters of `cluster_size` blocks of `kernel`, `threads` each with `smem_bytes` of dynamic shared memory,
// fit on `device` (the current one) at once; 0: not one. Opts the kernel into that shared memory first. The driver is
// asked once per (kernel, device) (launch.cu); later calls, a CUDA graph's capture among them, read the answer.
int cluster_capacity(const void* kernel, int cluster_size, int threads, size_t smem_bytes, int device);

// Launches `kernel` on `stream` (the entry points pass c10::cuda::getCurrentCUDAStream(); kernel files include no
// more of c10 than this needs, which keeps their host compile short), launch errors surfaced at once.
template <class... KernelArgs, class... Args>
void launch(void (*kernel)(KernelArgs...), int grid, int threads, size_t smem_bytes, cudaStream_t stream,
            Args&&... args) {
  if (smem_bytes > 48 * 1024) opt_in_dynamic_smem(reinterpret_cast<const void*>(kernel), smem_bytes);
  kernel<<<grid, threads, smem_bytes, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(T{}) with T the CUDA type of a float32, float16 or bfloat16 tensor's dtype.
template <class F>
void dispatch_dtype(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return f(float{});
    case c10::ScalarType::Half:
      return f(__half{});
    case c10::ScalarType::BFloat16:
      return f(__nv_bfloat16{});
    default:
      TORCH_CHECK(false, "lstm_attn: no CUDA kernel for dtype ", dtype);
  }
}

// 16-byte vector loads/stores are used when every row starts 16-byte aligned: the base pointers are and a row
// (H elements) is a whole number of 16-byte vectors.
inline bool rows_16b_aligned(int64_t row_elems, size_t elem_bytes, std::initializer_list<const void*> ptrs) {
  if ((row_elems * static_cast<int64_t>(elem_bytes)) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

}  // namespace lstm_attn::gpu
