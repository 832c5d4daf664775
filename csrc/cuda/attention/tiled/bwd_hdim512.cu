// The attention backward (dK/dV and dQ) for head dims in (256, 512] (and smaller ones where those buckets are trimmed).
#include "cuda/attention/tiled/bwd.cuh"

template void lstm_attn::gpu::attention_bwd_bucket<512>(const lstm_attn::gpu::AttnBwdParams&, lstm_attn::gpu::MmaPath,
                                                        cudaStream_t);
