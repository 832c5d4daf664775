// The host side of common.cuh's launches: the shared-memory opt-in and the cluster capacity, each asked of the driver
// once per (kernel, device). Before, every launch queried the device and set the kernel's attribute: driver calls on
// the host path of each kernel, and calls that a CUDA graph's capture need not see.
#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/common.cuh"

namespace lstm_attn::gpu {

void opt_in_dynamic_smem(const void* kernel, size_t bytes, int device) {
  static std::mutex mutex;
  static std::vector<int> optin_limit;                               // per device; 0 until read
  static std::map<std::pair<const void*, int>, size_t> opted_in;  // (kernel, device) -> bytes allowed
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

void opt_in_dynamic_smem(const void* kernel, size_t bytes) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  opt_in_dynamic_smem(kernel, bytes, device);
}

int cluster_capacity(const void* kernel, int cluster_size, int threads, size_t smem_bytes, int device) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> capacity;  // (kernel, device) -> clusters
  const std::lock_guard<std::mutex> lock(mutex);
  const auto known = capacity.find({kernel, device});
  if (known != capacity.end()) return known->second;
  // The occupancy calls count with the kernel's dynamic shared-memory limit: opted in first.
  if (smem_bytes > 48 * 1024) opt_in_dynamic_smem(kernel, smem_bytes, device);
  int clusters = 0;
  if (cluster_size == 1) {
    // A cluster of one is a plain block, and cudaOccupancyMaxActiveClusters needs sm_90.
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    clusters = per_sm * sms;
  } else {
    const ClusterLaunch launch(cluster_size, cluster_size, threads, smem_bytes, nullptr);
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.config));
  }
  capacity.emplace(std::make_pair(kernel, device), clusters);
  return clusters;
}

}  // namespace lstm_attn::gpu
