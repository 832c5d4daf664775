// The CUDA kernels of lstm_attn::lstm_fwd / lstm_bwd: input checks, the choice of plan, the step-by-step plan's two
// elementwise kernels, and the host side of the fused plan (weight packing and launch parameters; its kernels are in
// lstm_kernels.cuh, the design in lstm.h).
//
// Plans (the op's plan argument; lstm_attn/plans.py chooses, asking cuda_lstm_fused_unsupported first):
//   fused     the fused kernels (H <= 256 in a compiled bucket, clusters need sm_90, and the GPU gives a block their
//             shared memory), or an error that says why they cannot run
//   stepwise  a cuBLAS product and a small elementwise kernel per step (csrc/cpu/lstm.h): the simple fallback
// The fused float32 products use TF32 where cuDNN's RNN setting allows it (torch.backends.cudnn.rnn.fp32_precision,
// which torch.backends.cudnn.allow_tf32 sets too; TF32 is PyTorch's default): the LSTM these kernels replace is
// cuDNN's, which follows that setting. The GEMMs around the recurrence (input projection, weight gradients) are ATen's
// and follow torch.backends.cuda.matmul.allow_tf32 as every matmul does.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>

#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/lstm.h"
#include "cuda_queries.h"
#include "kernel_limits.h"
#include "cuda/common.cuh"
#include "cuda/lstm/lstm.h"
#include "lstm_cell.h"

namespace lstm_attn::gpu::lstm {

namespace {

namespace plan = ::lstm_attn::lstm;

// The step-by-step plan's elementwise steps (csrc/cpu/lstm.h): a thread per (batch row, unit) running the cell of
// csrc/lstm_cell.h. Simple on purpose: the plan for sizes the fused kernels do not take, and the yardstick they are
// checked against.
constexpr int kStepThreads = 256;

template <class T>
__global__ void __launch_bounds__(kStepThreads, kMinBlocksPerSm)
    step_forward_kernel(float* pre, const float* c_prev, float* c, T* h, int64_t cells, int H) {
  const int64_t i = int64_t(blockIdx.x) * kStepThreads + threadIdx.x;
  if (i >= cells) return;
  const int u = static_cast<int>(i % H);
  float* row = pre + i / H * 4 * H;
  const auto r = cell::forward(row[u], row[H + u], row[2 * H + u], row[3 * H + u], c_prev[i]);
  row[u] = r.i;
  row[H + u] = r.f;
  row[2 * H + u] = r.g;
  row[3 * H + u] = r.o;
  c[i] = r.c;
  h[i] = from_float<T>(r.h);
}

template <class T>
__global__ void __launch_bounds__(kStepThreads, kMinBlocksPerSm)
    step_backward_kernel(const float* gates, const float* c, const float* c_prev, const float* dh, float* dc, T* d_pre,
                         int64_t cells, int H) {
  const int64_t i = int64_t(blockIdx.x) * kStepThreads + threadIdx.x;
  if (i >= cells) return;
  const int u = static_cast<int>(i % H);
  const int64_t row = i / H * 4 * H;
  const float* g = gates + row;
  const auto r = cell::backward(g[u], g[H + u], g[2 * H + u], g[3 * H + u], c[i], c_prev[i], dh[i], dc[i]);
  d_pre[row + u] = from_float<T>(r.d_i);
  d_pre[row + H + u] = from_float<T>(r.d_f);
  d_pre[row + 2 * H + u] = from_float<T>(r.d_g);
  d_pre[row + 3 * H + u] = from_float<T>(r.d_o);
  dc[i] = r.dc_carry;
}

int step_blocks(int64_t cells) {
  TORCH_CHECK(cells <= int64_t(INT_MAX) * kStepThreads, "lstm_attn: B * H = ", cells, " is too large for one step");
  return static_cast<int>((cells + kStepThreads - 1) / kStepThreads);
}

void step_forward(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& h) {
  const int64_t cells = c.numel();
  if (cells == 0) return;
  dispatch_dtype(h.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(step_forward_kernel<T>, step_blocks(cells), kStepThreads, 0, c10::cuda::getCurrentCUDAStream(),
           pre.data_ptr<float>(), c_prev.data_ptr<float>(), c.data_ptr<float>(), static_cast<T*>(h.data_ptr()), cells,
           static_cast<int>(c.size(1)));
  });
}

void step_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev, const at::Tensor& dh,
                   const at::Tensor& dc, const at::Tensor& d_pre) {
  const int64_t cells = c.numel();
  if (cells == 0) return;
  dispatch_dtype(d_pre.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(step_backward_kernel<T>, step_blocks(cells), kStepThreads, 0, c10::cuda::getCurrentCUDAStream(),
           gates.data_ptr<float>(), c.data_ptr<float>(), c_prev.data_ptr<float>(), dh.data_ptr<float>(),
           dc.data_ptr<float>(), static_cast<T*>(d_pre.data_ptr()), cells, static_cast<int>(c.size(1)));
  });
}

const plan::StepKernels kCudaSteps{&step_forward, &step_backward};

bool cudnn_rnn_allows_tf32() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 11)
  // The RNN's own setting, as PyTorch's cuDNN RNN reads it. Asked without an operator, the context throws wherever
  // the RNN and convolution settings differ.
  return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN);
#else
  return at::globalContext().allowTF32CuDNN();
#endif
}

Path path_for(c10::ScalarType dtype) {
  if (dtype == at::kHalf) return Path::kHalf;
  if (dtype == at::kBFloat16) return Path::kBFloat16;
  return cudnn_rnn_allows_tf32() ? Path::kTf32 : Path::kFloat;
}

// The smallest compiled bucket that holds H (LSTM_ATTN_HEAD_DIMS may leave buckets out of a build), or 0. H up to 32
// takes the 64 bucket: a step of it is latency, not arithmetic, and one bucket fewer keeps the build short.
int bucket_for(int64_t H) {
#ifdef LSTM_ATTN_HDIM_64
  if (H <= 64) return 64;
#endif
#ifdef LSTM_ATTN_HDIM_128
  if (H <= 128) return 128;
#endif
#ifdef LSTM_ATTN_HDIM_256
  if (H <= 256) return 256;
#endif
  return 0;
}

// Calls f with the bucket as a std::integral_constant (only compiled buckets exist).
template <class F>
void with_bucket(int Hp, F&& f) {
  switch (Hp) {
#ifdef LSTM_ATTN_HDIM_64
    case 64:
      return f(std::integral_constant<int, 64>{});
#endif
#ifdef LSTM_ATTN_HDIM_128
    case 128:
      return f(std::integral_constant<int, 128>{});
#endif
#ifdef LSTM_ATTN_HDIM_256
    case 256:
      return f(std::integral_constant<int, 256>{});
#endif
    default:
      TORCH_CHECK(false, "lstm_attn: no fused LSTM bucket ", Hp, " in this build");
  }
}

// Why the fused kernels of bucket Hp cannot run `path` on `device` (the current one); empty if they can.
std::string ask_device(int Hp, Path path, int device) {
  Shape shape{};
  with_bucket(Hp, [&](auto bucket) { shape = fused_shape<decltype(bucket)::value>(path); });
  int major = 0, optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (shape.cluster > 1 && major < 9) return "need thread-block clusters (sm_90 or newer)";
  if (shape.smem > static_cast<size_t>(optin))
    return "need " + std::to_string(shape.smem) + " bytes of shared memory per block; this GPU allows " +
           std::to_string(optin);
  int clusters = 0;
  with_bucket(Hp, [&](auto bucket) { clusters = fused_capacity<decltype(bucket)::value>(path, device); });
  if (clusters == 0)
    return "need " + std::to_string(shape.cluster) + " co-resident blocks of " + std::to_string(shape.smem) +
           " bytes of shared memory each, which this GPU cannot hold";
  return "";
}

// Why the fused kernels cannot run hidden size H in dtype on device (the current one); empty if they can. Sets *shape
// where they can. The device is asked once per (bucket, path, device), before any CUDA graph captures a launch: the
// plans ask this before they choose "fused", and every fused call asks it before its first launch.
std::string fused_unsupported(c10::ScalarType dtype, int64_t H, c10::DeviceIndex device, Shape* shape) {
  if (H > kFusedLstmMaxHidden)
    return "the fused LSTM kernels take H up to " + std::to_string(kFusedLstmMaxHidden) + ", got H = " +
           std::to_string(H);
  const int Hp = bucket_for(H);
  if (Hp == 0)
    return "this build has no fused LSTM bucket for H = " + std::to_string(H) + " (LSTM_ATTN_HEAD_DIMS left it out)";
  const Path path = path_for(dtype);
  with_bucket(Hp, [&](auto bucket) { *shape = fused_shape<decltype(bucket)::value>(path); });
  static std::mutex mutex;
  static std::map<std::tuple<int, Path, int>, std::string> reasons;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto [known, fresh] = reasons.try_emplace({Hp, path, static_cast<int>(device)});
  if (fresh) known->second = ask_device(Hp, path, device);
  if (known->second.empty()) return "";
  return "the fused LSTM kernels for H = " + std::to_string(H) + " in " + std::string(c10::toString(dtype)) + " " +
         known->second;
}

// ops.cpp's cuda_lstm_fused_unsupported: what plans.py asks before it chooses "fused".
std::string fused_unsupported_query(c10::ScalarType dtype, int64_t H, c10::Device device) {
  TORCH_CHECK(device.is_cuda(), "cuda_lstm_fused_unsupported: device must be a CUDA device, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  Shape shape{};
  return fused_unsupported(dtype, H, c10::cuda::current_device(), &shape);
}

const bool kFusedQueryRegistered = (cuda_queries().lstm_fused_unsupported = &fused_unsupported_query, true);

// Layer l's weight slices for the fused kernels, in x's dtype: W_hh, or [W_ih | W_hh] for a layer above the group's
// bottom, each zero-padded to (4, Hp, Hp), then split by units into (cluster, 4 gates x units, Kw): block j's rows
// are the i, f, g, o rows of its units, contiguous.
at::Tensor pack_weights(const plan::ForwardState& f, int64_t l, bool with_input, const Shape& shape) {
  const int64_t H = f.H, Hp = shape.Hp;
  auto padded = [&](const at::Tensor& w) {
    at::Tensor out = at::zeros({4, Hp, Hp}, w.options());
    out.slice(1, 0, H).slice(2, 0, H).copy_(w.view({4, H, H}));
    return out;
  };
  const at::Tensor w = with_input ? at::cat({padded(f.w[4 * l]), padded(f.w[4 * l + 1])}, 2) : padded(f.w[4 * l + 1]);
  return w.view({4, shape.cluster, shape.units, w.size(2)}).permute({1, 0, 2, 3}).contiguous();
}

// A launch's sizes: the group's n layers of f's shape.
template <class Params>
Params group_params(const plan::ForwardState& f, int64_t n) {
  Params p{};
  p.B = static_cast<int>(f.B);
  p.T = static_cast<int>(f.T);
  p.H = static_cast<int>(f.H);
  p.layers = static_cast<int>(n);
  return p;
}

// The packed weight slices of one call (pack_weights), by layer: a forward fills them and keeps them for its backward
// (SavedPacks), which packs only what it is not handed.
using Packs = std::vector<at::Tensor>;

// The packs of forwards whose backward is still to come, by the storage of the forward's `gates`: the saved tensor
// that only a forward for the backward fills and that exactly its backward is handed. An entry is taken by that
// backward if the weights are the ones it was packed from (address and version) and the path is the same, and is
// dropped, unused, once its gates are freed. Keyed per forward, not by the weights' version counters: a CUDA graph's
// replays advance no version counter, so a captured forward that found packs by version would replay stale ones;
// here every forward packs, and only its own backward reuses what it packed.
class SavedPacks {
 public:
  void put(const at::Tensor& gates, at::TensorList weights, Path path, Packs packs) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.gates.expired() ? entries_.erase(it) : std::next(it);
    }
    entries_.insert_or_assign(gates.storage().unsafeGetStorageImpl(),
                              Entry{gates.storage().getWeakStorageImpl(), sources(weights), path, std::move(packs)});
  }

  // The packs of the forward that kept `gates`, or none (every tensor undefined).
  Packs take(const at::Tensor& gates, at::TensorList weights, Path path) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = entries_.find(gates.storage().unsafeGetStorageImpl());
    if (it == entries_.end()) return Packs(weights.size() / 4);
    Entry entry = std::move(it->second);
    entries_.erase(it);
    // A freed StorageImpl's address is not reused while an entry holds its weak reference.
    if (entry.gates.expired() || entry.path != path || entry.sources != sources(weights)) {
      return Packs(weights.size() / 4);
    }
    return std::move(entry.packs);
  }

  // Whether the weights can be told apart by version: inference tensors have no version counter.
  static bool versioned(at::TensorList weights) {
    for (const auto& w : weights)
      if (w.is_inference()) return false;
    return true;
  }

 private:
  using Sources = std::vector<std::pair<const void*, int64_t>>;

  static Sources sources(at::TensorList weights) {
    Sources out;
    for (const auto& w : weights) out.emplace_back(w.data_ptr(), w._version());
    return out;
  }

  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> gates;
    Sources sources;
    Path path;
    Packs packs;
  };
  std::mutex mutex_;
  std::unordered_map<const c10::StorageImpl*, Entry> entries_;
};

SavedPacks& saved_packs() {
  static SavedPacks packs;
  return packs;
}

// The biases below are freed when the runner returns, before the kernel has run: PyTorch's caching allocator hands
// their memory to no one else until the launch's stream has passed it. The packs outlive the call (SavedPacks).
plan::ForwardGroup fused_forward_group(Path path, Shape shape, std::shared_ptr<Packs> packs) {
  return [path, shape, packs](plan::ForwardState& f, int64_t l0, int64_t n, const at::Tensor& proj) {
    FwdParams p = group_params<FwdParams>(f, n);
    p.proj = proj.data_ptr<float>();
    at::Tensor bias[kMaxLayers];
    for (int g = 0; g < n; ++g) {
      const int64_t l = l0 + g;
      at::Tensor& w = (*packs)[l];
      w = pack_weights(f, l, g > 0, shape);
      p.w[g] = w.data_ptr();
      if (g > 0) {
        bias[g] = f.w[4 * l + 2].to(at::kFloat) + f.w[4 * l + 3].to(at::kFloat);
        p.bias[g] = bias[g].data_ptr<float>();
        p.mask[g] = f.mask ? (*f.mask)[l - 1].data_ptr() : nullptr;
      }
      p.h0[g] = f.h0[l].data_ptr();
      p.c0[g] = f.c0[l].data_ptr();
      p.hidden[g] = f.hidden[l].data_ptr();
      p.cell[g] = f.keep ? f.cell[l].data_ptr<float>() : nullptr;
      p.gates[g] = f.keep ? f.gates[l].data_ptr<float>() : nullptr;
      p.c_n[g] = f.c_n[l].data_ptr();
    }
    with_bucket(shape.Hp, [&](auto bucket) {
      fused_forward<decltype(bucket)::value>(p, path, f.x.get_device(), c10::cuda::getCurrentCUDAStream());
    });
  };
}

plan::BackwardGroup fused_backward_group(Path path, Shape shape, std::shared_ptr<Packs> packs) {
  return [path, shape, packs](plan::BackwardState& b, int64_t l0, int64_t n, const at::Tensor& dy) {
    const plan::ForwardState& f = b.f;
    BwdParams p = group_params<BwdParams>(f, n);
    p.dy = dy.data_ptr<float>();
    for (int g = 0; g < n; ++g) {
      const int64_t l = l0 + g;
      at::Tensor& w = (*packs)[l];
      if (!w.defined()) w = pack_weights(f, l, g > 0, shape);
      p.w[g] = w.data_ptr();
      if (g > 0) p.mask[g] = f.mask ? (*f.mask)[l - 1].data_ptr() : nullptr;
      p.c0[g] = f.c0[l].data_ptr();
      p.cell[g] = f.cell[l].data_ptr<float>();
      p.gates[g] = f.gates[l].data_ptr<float>();
      p.grad_h_n[g] = b.grad_h_n[l].data_ptr();
      p.grad_c_n[g] = b.grad_c_n[l].data_ptr();
      p.d_pre[g] = b.d_pre[l].data_ptr();
      p.grad_h0[g] = b.grad_h0[l].data_ptr();
      p.grad_c0[g] = b.grad_c0[l].data_ptr();
    }
    with_bucket(shape.Hp, [&](auto bucket) {
      fused_backward<decltype(bucket)::value>(p, path, f.x.get_device(), c10::cuda::getCurrentCUDAStream());
    });
  };
}

// The named plan for these inputs; the backward is handed its forward's. packs: the fused runners' packed weights,
// which they fill where a tensor is undefined.
plan::Plan make_plan(std::string_view name, const at::Tensor& x, int64_t H, const std::shared_ptr<Packs>& packs) {
  TORCH_CHECK(name == "fused" || name == "stepwise", "plan must be 'fused' or 'stepwise' on CUDA, got '", name, "'");
  // An empty batch has nothing to launch, and a grid of no blocks is a launch error: the stepwise loop skips it.
  if (name == "stepwise" || x.size(0) == 0) return plan::stepwise_plan(kCudaSteps);
  TORCH_CHECK(x.size(0) <= INT_MAX / 2 && x.size(1) <= INT_MAX / 2,
              "plan 'fused' cannot run: B or T is too large for one launch");
  Shape shape{};
  const std::string why = fused_unsupported(x.scalar_type(), H, x.get_device(), &shape);
  TORCH_CHECK(why.empty(), "plan 'fused' cannot run: ", why);
  const Path path = path_for(x.scalar_type());
  return {shape.layers, fused_forward_group(path, shape, packs), fused_backward_group(path, shape, packs)};
}

void check_cuda_dtype(const at::Tensor& x) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "lstm_attn's CUDA LSTM supports float32, bfloat16 and float16; x has dtype ", dtype,
              dtype == at::kDouble ? " (float64 runs on the 'cpu' and 'reference' backends)" : "");
}

plan::ForwardResult lstm_fwd_cuda(const at::Tensor& x, at::TensorList weights, const at::Tensor& h0,
                                  const at::Tensor& c0, const std::optional<at::Tensor>& dropout_mask,
                                  bool for_backward, std::string_view plan_name) {
  check_lstm_inputs(x, weights, h0, c0, dropout_mask);
  check_cuda_dtype(x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto packs = std::make_shared<Packs>(weights.size() / 4);
  plan::ForwardResult result =
      plan::forward(make_plan(plan_name, x, h0.size(2), packs), x, weights, h0, c0, dropout_mask, for_backward);
  const bool packed = !packs->empty() && packs->front().defined();
  if (for_backward && packed && SavedPacks::versioned(weights))
    saved_packs().put(std::get<5>(result), weights, path_for(x.scalar_type()), std::move(*packs));
  return result;
}

plan::BackwardResult lstm_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                   const at::Tensor& grad_c_n, const at::Tensor& x, at::TensorList weights,
                                   const at::Tensor& h0, const at::Tensor& c0,
                                   const std::optional<at::Tensor>& dropout_mask, const at::Tensor& hidden,
                                   const at::Tensor& cell, const at::Tensor& gates, std::string_view plan_name) {
  check_lstm_inputs(x, weights, h0, c0, dropout_mask);
  check_lstm_saved(x, h0.size(0), h0.size(2), hidden, cell, gates);
  check_lstm_grads(x, h0, grad_output, grad_h_n, grad_c_n);
  check_cuda_dtype(x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto packs = std::make_shared<Packs>(SavedPacks::versioned(weights)
                                           ? saved_packs().take(gates, weights, path_for(x.scalar_type()))
                                           : Packs(weights.size() / 4));
  return plan::backward(make_plan(plan_name, x, h0.size(2), packs), grad_output, grad_h_n, grad_c_n, x, weights, h0,
                        c0, dropout_mask, hidden, cell, gates);
}

}  // namespace
}  // namespace lstm_attn::gpu::lstm

TORCH_LIBRARY_IMPL(lstm_attn, CUDA, m) {
  m.impl("lstm_fwd", &lstm_attn::gpu::lstm::lstm_fwd_cuda);
  m.impl("lstm_bwd", &lstm_attn::gpu::lstm::lstm_bwd_cuda);
}
