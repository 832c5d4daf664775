// Tile sizes of the CPU attention_layernorm kernels, in one place so that the op lstm_attn::cpu_attention_tiles
// can tell the tests where the tile boundaries lie (the parity grid puts shapes on, just past and beyond each).
#pragma once

#include <cstdint>
#include <vector>

namespace lstm_attn::cpu {

// A score tile and the GEMM operands around it stay in L2. kQueryBlock query rows share one online-softmax pass
// (forward); a backward score tile is kKeyTile keys x kBackwardQueryBlock queries, wider so that the dK, dV
// accumulations (K = the query dim) run as larger GEMMs.
inline constexpr int64_t kQueryBlock = 64;
inline constexpr int64_t kBackwardQueryBlock = 128;
inline constexpr int64_t kKeyTile = 256;
// The backward splits a batch's keys into chunks when the batches alone offer fewer tasks than this. A fixed
// number rather than the thread count, so that the arithmetic (the dQ sums) does not depend on the machine;
// every chunk costs a dQ-sized buffer, so the batch size bounds their number.
inline constexpr int64_t kMinBackwardTasks = 64;

inline std::vector<int64_t> attention_tiles() {
  return {kQueryBlock, kBackwardQueryBlock, kKeyTile, kMinBackwardTasks};
}

}  // namespace lstm_attn::cpu
