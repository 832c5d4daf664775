// The gemm plan's fused CUDA kernels (design: csrc/attention_gemm.h), launched by steps.cpp between cuBLAS's products.
// Every matrix is contiguous; `rows` counts (batch, query) rows, B * Tq. T is the input dtype (float, __half,
// __nv_bfloat16), named by its c10::ScalarType: this header is host-only, for steps.cpp's host compiler.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace lstm_attn::gpu {

// probs (rows, Tk), T = exp(scores * scale - lse); lse (rows,) = log sum_j exp(scores_j * scale); scores float.
void gemm_softmax(const float* scores, int64_t rows, int Tk, float scale, void* probs, float* lse,
                  c10::ScalarType dtype, cudaStream_t stream);

// attn = o rounded to T, out = LayerNorm(attn + residual) with weight and bias; mean, rstd (rows,). o float (rows, H).
void gemm_residual_layernorm(const float* o, const void* residual, const void* weight, const void* bias, int64_t rows,
                             int H, float eps, void* out, void* attn, float* mean, float* rstd, c10::ScalarType dtype,
                             cudaStream_t stream);

// ds (rows, Tk), T = probs * (dp - delta) * scale; dp float (rows, Tk), delta (rows,).
void gemm_softmax_bwd(const void* probs, const float* dp, const float* delta, int64_t rows, int Tk, float scale,
                      void* ds, c10::ScalarType dtype, cudaStream_t stream);

}  // namespace lstm_attn::gpu
