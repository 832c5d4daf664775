// The fused LSTM for hidden sizes in (32, 64] (and smaller ones where those buckets are trimmed), every path.
#include "cuda/lstm/lstm_kernels.cuh"

namespace lstm_attn::gpu::lstm {
template Shape fused_shape<64>(Path);
template int fused_capacity<64>(Path, int);
template void fused_forward<64>(const FwdParams&, Path, int, cudaStream_t);
template void fused_backward<64>(const BwdParams&, Path, int, cudaStream_t);
}  // namespace lstm_attn::gpu::lstm
