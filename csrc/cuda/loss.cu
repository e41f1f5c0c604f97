// CUDA kernels of fastae_C::recon_loss_fwd and fastae_C::gaussian_kl_fwd.
//
// These losses are memory-bound, so everything happens in one pass: each element of input and
// target (mu and logvar for the KL term) is read once, and from the same registers the kernel
// writes the element-wise loss (reduction "none") or adds it to a per-thread fp32 sum, and, when
// asked, writes the gradient already scaled by the reduction, so backward is only a multiply.
// Loads and stores are 16-byte vectors wherever the pointers allow. Each block reduces its sums
// (warp shuffles, then shared memory) into a buffer that one block adds up in a fixed order:
// no float atomics, so results are bit-reproducible. One kernel instantiation per loss kind and
// flag combination keeps the element loop branch-free; the grid-stride loop runs on one wave of
// resident blocks. Math is fp32 with the CPU kernels' formulas (loss_kernels.h) and libdevice's
// logf/log1pf/expf (not the fast intrinsics), so values agree with torch to ~1 ulp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace fastae {
namespace {

// recon_loss_fwd's kinds, and the KL term as one more element-wise loss (x = mu, t = logvar).
enum Kind : int { kMse = 0, kL1 = 1, kBce = 2, kBceLogits = 3, kGaussianKl = 4 };
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2, kBatch = 3 };

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// V consecutive elements moved as one access of up to 16 bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// The loss of one element, d loss / d x, and for the KL term d loss / d logvar.
struct Terms {
  float loss, g0, g1;
};

template <int KIND>
__device__ __forceinline__ Terms terms(float x, float t) {
  if constexpr (KIND == kMse) {
    const float d = x - t;
    return {d * d, d * 2.0f, 0.0f};
  } else if constexpr (KIND == kL1) {
    const float d = x - t;
    return {fabsf(d), static_cast<float>((d > 0.0f) - (d < 0.0f)), 0.0f};
  } else if constexpr (KIND == kBce) {
    // fmaxf drops a NaN where the CPU's maximum keeps it, but only for x outside [0, 1], which fails the op.
    return {(t - 1.0f) * fmaxf(log1pf(-x), -100.0f) - t * fmaxf(logf(x), -100.0f),
            (x - t) / fmaxf((1.0f - x) * x, 1e-12f), 0.0f};
  } else if constexpr (KIND == kBceLogits) {
    // fminf drops a NaN x, but (1 - t) * x keeps it.
    return {(1.0f - t) * x - fminf(x, 0.0f) + log1pf(expf(-fabsf(x))), 1.0f / (1.0f + expf(-x)) - t, 0.0f};
  } else {
    const float e = expf(t);
    return {0.5f * (x * x + e - 1.0f - t), x, 0.5f * (e - 1.0f)};
  }
}

// loss_kernel's arguments: pointers (null where unused) and sizes.
template <typename T>
struct Args {
  const T* x;
  const T* t;
  const float* w;  // element i has weight w[i % period]
  T* loss;
  T* g0;
  T* g1;
  float* partial;           // per-block loss sums
  unsigned long long* bad;  // per-block counts of bce inputs outside [0, 1]
  int64_t n, period;
  float scale;
  bool vec;  // the bulk moves in 16-byte Packs: pointers aligned, period % V == 0
};

// An element's (or a pack's) offset into the weights, stepped without a division.
struct WeightCursor {
  int64_t at, step, period;
  __device__ void advance() {
    at += step;
    at -= at >= period ? period : 0;
  }
};

// Sum over the block, valid in thread 0; every thread must call it. Fixed order: deterministic.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warps[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / kWarp ? warps[lane] : A(0);
#pragma unroll
    for (int o = kThreads / kWarp / 2; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // warps is free for the next call
  return v;
}

// The fused pass over n elements (grid-stride): Packs while vec, then single elements.
// STORE_LOSS (reduction none) writes the element losses instead of summing them. The outputs
// are fresh tensors, so __restrict__ holds and lets later iterations' loads start early.
template <typename T, int KIND, bool WEIGHTED, bool GRAD, bool STORE_LOSS>
__global__ void __launch_bounds__(kThreads)
    loss_kernel(const T* __restrict__ x, const T* __restrict__ t, const float* __restrict__ w, T* __restrict__ loss,
                T* __restrict__ g0, T* __restrict__ g1, float* __restrict__ partial,
                unsigned long long* __restrict__ bad, int64_t n, int64_t period, float scale, bool vec) {
  constexpr int V = 16 / sizeof(T);
  constexpr int WV = V < 4 ? V : 4;  // weights are fp32: a pack's V of them in 16-byte pieces
  using P = Pack<T, V>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  [[maybe_unused]] float sum = 0.0f;
  [[maybe_unused]] unsigned long long nbad = 0;

  // The weighted loss and scaled gradients of one element, counted into sum and nbad.
  const auto element = [&](float xe, float te, float we) {
    Terms e = terms<KIND>(xe, te);
    if constexpr (WEIGHTED) {
      e.loss *= we;
      e.g0 *= we;
    }
    if constexpr (!STORE_LOSS) sum += e.loss;
    if constexpr (KIND == kBce) nbad += !(xe >= 0.0f && xe <= 1.0f);  // NaN included
    return Terms{e.loss, e.g0 * scale, e.g1 * scale};
  };

  const int64_t packs = vec ? n / V : 0;
  WeightCursor wc{first * V % period, stride * V % period, period};
  for (int64_t p = first; p < packs; p += stride) {
    const P xv = reinterpret_cast<const P*>(x)[p], tv = reinterpret_cast<const P*>(t)[p];
    float wv[V];
    if constexpr (WEIGHTED) {
      // period % V == 0: the pack's weights are contiguous and V-aligned.
#pragma unroll
      for (int k = 0; k < V / WV; ++k) {
        const Pack<float, WV> piece = reinterpret_cast<const Pack<float, WV>*>(w + wc.at)[k];
#pragma unroll
        for (int j = 0; j < WV; ++j) wv[k * WV + j] = piece.v[j];
      }
      wc.advance();
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) wv[j] = 1.0f;
    }
    P lv, gv0, gv1;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const Terms e = element(static_cast<float>(xv.v[j]), static_cast<float>(tv.v[j]), wv[j]);
      lv.v[j] = static_cast<T>(e.loss);
      gv0.v[j] = static_cast<T>(e.g0);
      gv1.v[j] = static_cast<T>(e.g1);
    }
    if constexpr (STORE_LOSS) reinterpret_cast<P*>(loss)[p] = lv;
    if constexpr (GRAD) reinterpret_cast<P*>(g0)[p] = gv0;
    if constexpr (GRAD && KIND == kGaussianKl) reinterpret_cast<P*>(g1)[p] = gv1;
  }

  int64_t i = packs * V + first;
  wc = {i % period, stride % period, period};
  for (; i < n; i += stride) {
    const Terms e = element(static_cast<float>(x[i]), static_cast<float>(t[i]), WEIGHTED ? w[wc.at] : 1.0f);
    if constexpr (WEIGHTED) wc.advance();
    if constexpr (STORE_LOSS) loss[i] = static_cast<T>(e.loss);
    if constexpr (GRAD) g0[i] = static_cast<T>(e.g0);
    if constexpr (GRAD && KIND == kGaussianKl) g1[i] = static_cast<T>(e.g1);
  }

  if constexpr (!STORE_LOSS) {
    const float block = block_sum(sum);
    if (threadIdx.x == 0) partial[blockIdx.x] = block;
  }
  if constexpr (KIND == kBce) {
    const unsigned long long block = block_sum(nbad);
    if (threadIdx.x == 0) bad[blockIdx.x] = block;
  }
}

// *loss = scale * the sum of partial[0:blocks], *bad_total = the sum of bad[0:blocks], each in a
// fixed order; a null pair is skipped. The loss sum is in double, as on the CPU.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const float* partial, const unsigned long long* bad, int blocks, float scale, T* loss,
                  int64_t* bad_total) {
  double sum = 0.0;
  unsigned long long count = 0;
  for (int b = threadIdx.x; b < blocks; b += kThreads) {
    if (partial != nullptr) sum += partial[b];
    if (bad != nullptr) count += bad[b];
  }
  sum = block_sum(sum);
  count = block_sum(count);
  if (threadIdx.x == 0 && loss != nullptr) *loss = static_cast<T>(sum * scale);
  if (threadIdx.x == 0 && bad_total != nullptr) *bad_total = static_cast<int64_t>(count);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }  // null is aligned

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launches loss_kernel<T, KIND, ...> on `work` threads' worth of elements, turning the remaining
// runtime flags (WEIGHTED, GRAD, STORE_LOSS in order) into template arguments one at a time.
// Returns the number of blocks.
template <typename T, int KIND, bool... Flags>
int launch(const Args<T>& a, int64_t work) {
  const auto kernel = loss_kernel<T, KIND, Flags...>;
  // At most one full wave: every block resident at once, so none waits to start and all finish
  // together (equal shares of the grid-stride loop), with the most loads in flight per SM.
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int64_t wave = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * std::max(per_sm, 1);
  const int blocks = static_cast<int>(std::min(ceil_div(work, kThreads), wave));
  kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a.x, a.t, a.w, a.loss, a.g0, a.g1, a.partial, a.bad,
                                                                    a.n, a.period, a.scale, a.vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return blocks;
}

template <typename T, int KIND, bool... Flags, typename... Rest>
int launch(const Args<T>& a, int64_t work, bool flag, Rest... rest) {
  return flag ? launch<T, KIND, Flags..., true>(a, work, rest...) : launch<T, KIND, Flags..., false>(a, work, rest...);
}

float reduction_scale(int64_t reduction, int64_t numel, int64_t batch) {
  if (reduction == kMean) return numel ? 1.0f / numel : 0.0f;
  if (reduction == kBatch) return batch ? 1.0f / batch : 0.0f;
  return 1.0f;
}

// The pass of `kind` over x and y (input and target, or mu and logvar) with fp32 weights w (or
// undefined). Returns (loss, d/dx, d/dy) as the ops define them; d/dy only for the KL term.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_loss(int kind, const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& w, int64_t reduction, int64_t batch,
                                                          bool need_grad) {
  const int64_t n = x.numel();
  const bool none = reduction == kNone, count = kind == kBce;
  const float scale = reduction_scale(reduction, n, batch);
  const auto grad = [&] { return need_grad ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options()); };
  at::Tensor loss = at::empty(none ? x.sizes() : at::IntArrayRef{}, x.options());
  at::Tensor g0 = grad(), g1 = kind == kGaussianKl ? grad() : at::Tensor();
  if (n == 0) {
    if (!none) loss.zero_();
    return {loss, g0, g1};
  }

  // Buffers for the most blocks launch() can choose; bad[max_blocks] receives the total count.
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const int max_blocks = props->multiProcessorCount * (props->maxThreadsPerMultiProcessor / kThreads);
  const at::Tensor partial = none ? at::Tensor() : at::empty({max_blocks}, x.options().dtype(at::kFloat));
  const at::Tensor bad = count ? at::empty({max_blocks + 1}, x.options().dtype(at::kLong)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastae_loss_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    Args<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.t = y.const_data_ptr<scalar_t>();
    a.w = w.defined() ? w.const_data_ptr<float>() : nullptr;
    a.loss = none ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    a.g0 = need_grad ? g0.mutable_data_ptr<scalar_t>() : nullptr;
    a.g1 = need_grad && g1.defined() ? g1.mutable_data_ptr<scalar_t>() : nullptr;
    a.n = n;
    a.period = w.defined() ? w.numel() : n;
    a.scale = scale;
    a.vec = aligned16(a.x) && aligned16(a.t) && aligned16(a.w) && aligned16(a.loss) && aligned16(a.g0) &&
            aligned16(a.g1) && (a.w == nullptr || a.period % V == 0);
    a.partial = none ? nullptr : partial.mutable_data_ptr<float>();
    a.bad = count ? reinterpret_cast<unsigned long long*>(bad.mutable_data_ptr<int64_t>()) : nullptr;

    const int64_t work = std::max<int64_t>(a.vec ? n / V : n, 1);
    const bool weighted = a.w != nullptr;
    int blocks = 0;
    switch (kind) {
      case kMse: blocks = launch<scalar_t, kMse>(a, work, weighted, need_grad, none); break;
      case kL1: blocks = launch<scalar_t, kL1>(a, work, weighted, need_grad, none); break;
      case kBce: blocks = launch<scalar_t, kBce>(a, work, weighted, need_grad, none); break;
      case kBceLogits: blocks = launch<scalar_t, kBceLogits>(a, work, weighted, need_grad, none); break;
      default: blocks = launch<scalar_t, kGaussianKl, false>(a, work, need_grad, none); break;
    }
    if (!none || count) {
      finish_kernel<scalar_t><<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          a.partial, a.bad, blocks, scale, none ? nullptr : loss.mutable_data_ptr<scalar_t>(),
          count ? bad.mutable_data_ptr<int64_t>() + max_blocks : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  // Reading the count back is a sync; torch uses a device assert, which cannot raise this error.
  if (count) TORCH_CHECK(bad[max_blocks].item<int64_t>() == 0, "all elements of input should be between 0 and 1");
  return {loss, g0, g1};
}

void check_pair(const at::Tensor& x, const at::Tensor& y, int64_t reduction, const char* op, const char* names) {
  TORCH_CHECK(x.is_cuda(), "fastae_C::", op, ": expected CUDA tensors, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "fastae_C::", op, ": dtype must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(y.device() == x.device() && y.scalar_type() == x.scalar_type(), "fastae_C::", op, ": expected ",
              names, " on one device with one dtype, got ", x.device(), ", ", x.scalar_type(), " and ", y.device(),
              ", ", y.scalar_type());
  TORCH_CHECK(x.sizes() == y.sizes() && x.is_contiguous() && y.is_contiguous(), "fastae_C::", op,
              ": expected contiguous ", names, " of one shape");
  TORCH_CHECK(reduction >= kNone && reduction <= kBatch, "fastae_C::", op, ": reduction must be in [0, 3], got ",
              reduction);
}

std::tuple<at::Tensor, at::Tensor> recon_loss_fwd_cuda(const at::Tensor& input, const at::Tensor& target,
                                                       const std::optional<at::Tensor>& weight, int64_t kind,
                                                       int64_t reduction, int64_t batch, bool need_grad) {
  check_pair(input, target, reduction, "recon_loss_fwd", "input and target");
  TORCH_CHECK(kind >= kMse && kind <= kBceLogits, "fastae_C::recon_loss_fwd: kind must be in [0, 3], got ", kind);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor w;
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device() == input.device(), "fastae_C::recon_loss_fwd: expected weight on ", input.device(),
                ", got ", weight->device());
    const int64_t period = weight->numel();
    TORCH_CHECK(period > 0 && input.numel() % period == 0, "fastae_C::recon_loss_fwd: weight size ", period,
                " does not divide ", input.numel());
    w = weight->to(at::kFloat).contiguous();
  }
  auto out = fused_loss(static_cast<int>(kind), input, target, w, reduction, batch, need_grad);
  return {std::get<0>(out), std::get<1>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_fwd_cuda(const at::Tensor& mu, const at::Tensor& logvar,
                                                                    int64_t reduction, int64_t batch, bool need_grad) {
  check_pair(mu, logvar, reduction, "gaussian_kl_fwd", "mu and logvar");
  const c10::cuda::CUDAGuard guard(mu.device());
  return fused_loss(kGaussianKl, mu, logvar, at::Tensor(), reduction, batch, need_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CUDA, m) {
  m.impl("recon_loss_fwd", &recon_loss_fwd_cuda);
  m.impl("gaussian_kl_fwd", &gaussian_kl_fwd_cuda);
}

}  // namespace fastae
