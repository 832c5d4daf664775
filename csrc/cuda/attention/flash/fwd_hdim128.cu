// The flash forward for head dims up to 128 (and smaller ones where those buckets are trimmed).
#include "cuda/attention/flash/fwd.cuh"

template void lstm_attn::gpu::flash::fwd_bucket<128>(const lstm_attn::gpu::AttnFwdParams&, c10::ScalarType,
                                                     cudaStream_t);
