// The attention + LayerNorm forward for head dims in (32, 64] (and smaller ones where those buckets are trimmed).
#include "cuda/attention/tiled/fwd.cuh"

template void lstm_attn::gpu::attention_fwd_bucket<64>(const lstm_attn::gpu::AttnFwdParams&, lstm_attn::gpu::MmaPath,
                                                       cudaStream_t);
