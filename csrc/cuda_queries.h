// What lstm_attn/plans.py asks of the CUDA build before it chooses a plan. The schemas are ops.cpp's, like every
// other; the answers live beside the CUDA kernels whose traits they read, which fill this table when the library
// loads. A build without CUDA kernels leaves it empty, and the ops say so.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <string_view>
#include <vector>

namespace lstm_attn {

struct CudaQueries {
  // The rows per tile of the kernels an attention plan runs for (H, dtype), distinct and sorted.
  std::vector<int64_t> (*attention_tiles)(std::string_view plan, int64_t H, at::ScalarType dtype) = nullptr;
  // Why the fused LSTM kernels cannot run hidden size H in dtype on device, or "" where they can.
  std::string (*lstm_fused_unsupported)(at::ScalarType dtype, int64_t H, at::Device device) = nullptr;
};

inline CudaQueries& cuda_queries() {
  static CudaQueries queries;
  return queries;
}

template <class Fn>
Fn cuda_query(Fn CudaQueries::*member) {
  Fn fn = cuda_queries().*member;
  TORCH_CHECK(fn != nullptr, "lstm_attn was built without CUDA kernels: this question has no answer here");
  return fn;
}

}  // namespace lstm_attn
