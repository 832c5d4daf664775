// The size limits of the CUDA kernels, written once for every C++ and CUDA file. lstm_attn/plans.py holds the same
// numbers for the Python side (which refuses before any kernel runs); tests/test_limits.py checks the two agree.
#pragma once

namespace lstm_attn {

// The largest head dim of the CUDA attention and softmax_pool kernels (every plan but flash).
constexpr int kMaxHeadDim = 512;
// The largest head dim of the flash attention plan.
constexpr int kFlashMaxHeadDim = 128;
// The largest hidden size of the fused CUDA LSTM kernels (larger ones run the stepwise plan).
constexpr int kFusedLstmMaxHidden = 256;

}  // namespace lstm_attn
