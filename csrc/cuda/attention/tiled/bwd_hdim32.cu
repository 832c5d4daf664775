// The attention backward (dK/dV and dQ) for head dims in [1, 32].
#include "cuda/attention/tiled/bwd.cuh"

template void lstm_attn::gpu::attention_bwd_bucket<32>(const lstm_attn::gpu::AttnBwdParams&, lstm_attn::gpu::MmaPath,
                                                       cudaStream_t);
