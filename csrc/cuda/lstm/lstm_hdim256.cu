// The fused LSTM for hidden sizes in (128, 256] (and smaller ones where those buckets are trimmed), every path.
#include "cuda/lstm/lstm_kernels.cuh"

namespace lstm_attn::gpu::lstm {
template Shape fused_shape<256>(Path);
template int fused_capacity<256>(Path, int);
template void fused_forward<256>(const FwdParams&, Path, int, cudaStream_t);
template void fused_backward<256>(const BwdParams&, Path, int, cudaStream_t);
}  // namespace lstm_attn::gpu::lstm
