// The fused CUDA LSTM: persistent kernels that run a group of up to two layers over the whole sequence, forward and
// backward. UNTESTED ON A GPU as written: every index, barrier and buffer size below is argued in these comments and
// checked by the compiler (ptxas resources, static_asserts), not yet by a run.
//
// Design
// ------
// Batch split. A cluster of kCluster blocks owns kRows = 16 batch rows (one tensor-core row tile) for the whole
// sequence; rows never interact, so clusters never synchronise with one another and need not be resident together.
// Inside a cluster, block `rank` owns hidden units [rank * hs, (rank + 1) * hs) of every layer of the group and keeps
// the weights of those units on chip for the whole launch: for layer g its slice of 4 hs rows (the i, f, g, o rows of
// its units, gate-major), over Kw(g) columns: W_hh (Kw = Hp) for the group's bottom layer, [W_ih | W_hh] (Kw = 2 Hp)
// for a layer above it in the group. Hp is H rounded up to a bucket (64, 128, 256); padded units have zero
// weights and stay exactly zero, padded rows stay zero, and neither is ever stored.
//
// Wavefront. Iteration s runs layer g at step t = s - g (forward) or t = T - 1 - (s - (top - g)) (backward), so the
// layers of a group overlap and every product of iteration s reads only what iteration s - 1 wrote: one cluster
// barrier per iteration. T + layers - 1 iterations forward, T + layers backward (the last one yields dh0).
//
// Forward, iteration s, layer g at step t:
//   1. gates(16 x 4hs, float, shared) = A @ Wslice_g^T on tensor cores (WMMA; exact FFMA for float32 without TF32),
//      A = [h_{g,t-1}] (16 x Hp) for the bottom layer, [x_{g,t} | h_{g,t-1}] (16 x 2Hp) above it, read from the
//      block's own copy of the group's h (hbuf[s % 2], x's dtype).
//   2. a thread per (row, unit) of the block's units adds the input projection (bottom layer: proj, computed by
//      cuBLAS before the launch with both biases) or the biases, and runs the cell (csrc/lstm_cell.h) with c_{t-1}
//      kept in its registers in float32; h_t is rounded to the dtype once, written to hbuf[(s + 1) % 2] of every
//      block of the cluster (distributed shared memory), with layer g + 1's input x = h_t * mask (rounded), and to
//      global memory (hidden; with for_backward also the gates and c_t, float32).
//   3. cluster barrier.
// Backward, iteration s, layer g at step t (k = T - 1 - t steps done):
//   1. [dx | dh] (16 x nb, float) = dpre_{g,t+1} (16 x 4hs, dtype, the block's own preactivation gradients) @
//      Wslice_g (4hs x Kw): the block's partial sums over its own gate rows, for every unit: dh_{g,t} (recurrent) and,
//      above the bottom layer, dx_{g,t+1}, the gradient of layer g - 1's h at step t + 1.
//   2. each partial goes to the block owning its units (distributed shared memory, red[s % 2], a slot per source
//      block); cluster barrier; each block sums its slots in rank order (deterministic) and adds dy (from outside the
//      group, for its top layer), the layer above's dx times the dropout mask, and grad h_n at t = T - 1.
//   3. the cell's backward (c_t, c_{t-1}, the gates from the forward; dc carried in registers, float32) gives
//      dpre_{g,t}: rounded to the dtype once, stored in shared memory for the next product and in global memory for
//      the weight gradients, which cuBLAS computes after the recurrence. At k = T the sums are dh0 and the carry dc0.
//
// The same weight slice serves both directions: forward reads it column-major (k = column), backward row-major
// (k = gate row). Double buffers make one cluster barrier per iteration enough. Forward, iteration s writes every
// block's hbuf[(s + 1) % 2], last read in iteration s - 1, before barrier s - 1, which the writer has passed.
// Backward, iteration s writes red[s % 2], last read in iteration s - 2, before barrier s - 1. Each kernel's first
// remote write follows a barrier behind every block's initialisation, and its last one precedes a barrier that every
// block passes before it exits.
//
// Shapes per bucket and path: hidden units per block, blocks per cluster, dynamic shared memory forward / backward
// (KB). The largest unit count whose buffers fit kSmemBudget, so the fewest blocks per cluster barrier: chosen by
// fit, not by measurement.
//   Hp   layers  16-bit                   tf32                     exact float32
//   64   2       64 x 1, 149 / 157        32 x 2, 141 / 153        32 x 2, 138 / 150
//   128  2       32 x 4, 141 / 181        16 x 8, 155 / 179        16 x 8, 153 / 177
//   256  1       64 x 4, 165 / 189        32 x 8, 171 / 187        32 x 8, 169 / 185
// Clusters of more than one block need sm_90; below it the host runs only the one-block configurations fused.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace lstm_attn::gpu::lstm {

constexpr int kRows = 16;     // batch rows per cluster: one tensor-core row tile
constexpr int kThreads = 256;  // per block: eight warps
constexpr int kMaxLayers = 2;  // per launch
constexpr int kMaxCluster = 8;  // the portable cluster size
constexpr size_t kSmemBudget = 220 * 1024;  // of the 227 KB a block may opt into on sm_90

// The block-level product: tensor cores (half, bfloat16; tf32 for float32 where cudnn.allow_tf32) or exact FFMA.
enum class Path { kHalf, kBFloat16, kTf32, kFloat };

struct FwdParams {
  int B, T, H, layers;               // layers in this group: 1 or 2
  const void* w[kMaxLayers];         // (kCluster, 4 hs, Kw(g)), x's dtype: the packed weight slices
  const float* bias[kMaxLayers];     // (4H): b_ih + b_hh of layer g >= 1 (the bottom layer's are in proj)
  const float* proj;                 // (T, B, 4H): the bottom layer's input projection with both biases
  const void* h0[kMaxLayers];        // (B, H)
  const void* c0[kMaxLayers];        // (B, H)
  const void* mask[kMaxLayers];      // (T, B, H) multiplying layer g's input (g >= 1); null: no dropout
  void* hidden[kMaxLayers];          // (T + 1, B, H): h_t at t + 1
  float* cell[kMaxLayers];           // (T, B, H), or null: not kept
  float* gates[kMaxLayers];          // (T, B, 4H), or null: not kept
  void* c_n[kMaxLayers];             // (B, H)
};

struct BwdParams {
  int B, T, H, layers;
  const void* w[kMaxLayers];         // as FwdParams
  const void* c0[kMaxLayers];        // (B, H)
  const void* mask[kMaxLayers];      // as FwdParams
  const float* cell[kMaxLayers];     // (T, B, H), from the forward
  const float* gates[kMaxLayers];    // (T, B, 4H), from the forward
  const float* dy;                   // (T, B, H): the top layer's gradient from outside the group
  const void* grad_h_n[kMaxLayers];  // (B, H)
  const void* grad_c_n[kMaxLayers];  // (B, H)
  void* d_pre[kMaxLayers];           // (T, B, 4H): the preactivation gradients
  void* grad_h0[kMaxLayers];         // (B, H)
  void* grad_c0[kMaxLayers];         // (B, H)
};

// What the host needs of a bucket's configuration to pack the weights and plan the groups.
struct Shape {
  int Hp;       // the bucket: H padded to it
  int layers;   // per launch
  int units;    // hidden units per block (hs)
  int cluster;  // blocks per cluster
  size_t smem;  // dynamic shared memory per block, the larger of the two kernels'
};

// Per bucket Hp (64, 128, 256), compiled in lstm_hdim<Hp>.cu. device: the current device.
template <int Hp>
Shape fused_shape(Path path);
// How many clusters of the bucket's kernels fit on the device at once (the fewer of forward's and backward's); 0:
// not one. Asks the driver once per (kernel, device), which readies the kernels for launches there.
template <int Hp>
int fused_capacity(Path path, int device);
template <int Hp>
void fused_forward(const FwdParams& p, Path path, int device, cudaStream_t stream);
template <int Hp>
void fused_backward(const BwdParams& p, Path path, int device, cudaStream_t stream);

}  // namespace lstm_attn::gpu::lstm
