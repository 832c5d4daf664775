// The allocator of the fused CPU LSTM's big workspaces (lstm.h's Plan::workspace_allocator): the saved hidden, cell
// and gates of a forward and the backward's preactivation gradients, tens to hundreds of MB per call.
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace lstm_attn::lstm {

// Blocks of 2 MiB and more: 2 MiB-aligned, advised MADV_HUGEPAGE, and kept for reuse when freed (at most
// kWorkspaceCacheBytes of them at a time); smaller blocks and other systems: c10's CPU allocator.
c10::Allocator* workspace_allocator();

// What the cache holds at most. A training loop's calls ask for the same sizes each step, so the blocks one step
// frees serve the next: the process's peak memory is that of one step, as without the cache, but it stays resident.
constexpr size_t kWorkspaceCacheBytes = size_t(1) << 30;

// Hands every cached block back to the system (the op cpu_empty_cache, lstm_attn.empty_cache()); returns their bytes.
int64_t empty_workspace_cache();

}  // namespace lstm_attn::lstm
