// The attention + LayerNorm forward for head dims in (256, 512] (and smaller ones where those buckets are trimmed).
#include "cuda/attention/tiled/fwd.cuh"

template void lstm_attn::gpu::attention_fwd_bucket<512>(const lstm_attn::gpu::AttnFwdParams&, lstm_attn::gpu::MmaPath,
                                                        cudaStream_t);
