// The attention + LayerNorm forward for head dims in [1, 32].
#include "cuda/attention/tiled/fwd.cuh"

template void lstm_attn::gpu::attention_fwd_bucket<32>(const lstm_attn::gpu::AttnFwdParams&, lstm_attn::gpu::MmaPath,
                                                       cudaStream_t);
