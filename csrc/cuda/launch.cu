// The host side of common.cuh's launch(): the shared-memory opt-in, done once per (kernel, device). Before, every
// launch queried the device and set the kernel's attribute: two driver calls on the host path of each kernel.
#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/common.cuh"

namespace lstm_attn::gpu {

void opt_in_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mutex;
  static std::vector<int> optin_limit;                               // per device; 0 until read
  static std::map<std::pair<const void*, int>, size_t> opted_in;  // (kernel, device) -> bytes allowed
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& allowed = opted_in[{kernel, device}];
  if (bytes <= allowed) return;
  if (optin_limit.size() <= static_cast<size_t>(device)) optin_limit.resize(device + 1, 0);
  int& limit = optin_limit[device];
  if (limit == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(limit), "lstm_attn: this kernel needs ", bytes,
              " bytes of shared memory per block, but GPU ", device, " allows ", limit);
  // The largest size the kernel is launched with on this device, so that a later, smaller launch needs no call.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  allowed = bytes;
}

}  // namespace lstm_attn::gpu
