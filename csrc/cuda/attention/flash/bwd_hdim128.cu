// The flash backward for head dims up to 128 (and smaller ones where those buckets are trimmed).
#include "cuda/attention/flash/bwd.cuh"

template void lstm_attn::gpu::flash::bwd_bucket<128>(const lstm_attn::gpu::AttnBwdParams&, c10::ScalarType,
                                                     cudaStream_t);
