// The CPU LSTM's throughput plan "fused" (lstm_attn/plans.py chooses it): the layer loop of lstm.h with each layer's
// whole recurrence in one parallel region. Each thread owns a slice of the batch (rows are independent, so no
// barrier between steps) and runs every step of it: the recurrent product through a register-blocked micro-kernel
// over a packed, cache-resident W_hh, with the cell (csrc/lstm_cell.h's function) in the kernel's epilogue, so that
// the preactivations never leave registers. The input projections, and in the backward dX and every weight
// gradient, stay single GEMMs over all B T rows (run_forward, run_backward).
//
// float32 runs kernels compiled for AVX-512, AVX2 + FMA and baseline SSE2, the best the CPU has picked at run time
// (plans "fused-avx2" and "fused-sse2" cap it, for tests and measurements); float64, bfloat16 and float16 run the same
// structure in scalar code (float64 is for gradcheck; the 16-bit dtypes round h and the preactivation gradients to
// the dtype where they are stored, as the step-by-step plan does).
#pragma once

#include <string_view>

#include "cpu/lstm.h"

namespace lstm_attn::lstm {

// isa_cap: "" (the CPU's best kernels), "avx2" or "sse2".
Plan fused_plan(std::string_view isa_cap);

}  // namespace lstm_attn::lstm
