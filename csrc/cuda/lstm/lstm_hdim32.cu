// The fused LSTM for hidden sizes up to 32 (and smaller ones where those buckets are trimmed), every path.
#include "cuda/lstm/lstm_kernels.cuh"

namespace lstm_attn::gpu::lstm {
template Shape fused_shape<32>(Path);
template void fused_forward<32>(const FwdParams&, Path, cudaStream_t);
template void fused_backward<32>(const BwdParams&, Path, cudaStream_t);
}  // namespace lstm_attn::gpu::lstm
