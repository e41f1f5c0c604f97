// CPU kernels of fastae_C::linear_act_{fwd,bwd}: the GEMMs go to at::addmm / at::mm (oneDNN or
// BLAS), and everything elementwise around them — bias is folded into addmm; the activation in
// forward; the activation derivative and the bias-gradient reduction in backward — is one
// parallel pass over the [M, N] output instead of the several eager ops autograd would run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "activation.h"
#include "vec_dispatch.h"

namespace fastae {
namespace {

template <typename F>
void dispatch_activation(int64_t act, F&& f) {
  switch (act) {
    case kNone: return f(std::integral_constant<int, kNone>{});
    case kRelu: return f(std::integral_constant<int, kRelu>{});
    case kLeakyRelu: return f(std::integral_constant<int, kLeakyRelu>{});
    case kGelu: return f(std::integral_constant<int, kGelu>{});
    case kGeluTanh: return f(std::integral_constant<int, kGeluTanh>{});
    case kSigmoid: return f(std::integral_constant<int, kSigmoid>{});
    case kTanh: return f(std::integral_constant<int, kTanh>{});
    case kSilu: return f(std::integral_constant<int, kSilu>{});
    default: TORCH_CHECK(false, "fastae: activation id must be in [0, ", int(kNumActivations), "), got ", act);
  }
}

// With ACT a compile-time constant the switch in act_forward/act_grad folds away and the
// loops below vectorize.
template <int ACT, typename T>
void apply_forward(const T* pre, T* out, int64_t n) {
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(act_forward(ACT, static_cast<float>(pre[i])));
  });
}

// fp32: the Vectorized (Sleef) kernels of loss_kernels.h, built for this CPU's capability.
template <int ACT>
void apply_forward(const float* pre, float* out, int64_t n) {
  const auto kernel = FASTAE_SEGMENT(act_forward_segment);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) { kernel(ACT, pre + begin, out + begin, end - begin); });
}

// g = grad_out * act'(saved), and when db is wanted its column sums in fp32, in one pass.
template <int ACT, typename T>
void grad_preactivation(const T* grad_out, const T* saved, T* g, float* db, int64_t M, int64_t N) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), M));
  std::vector<float> partial(db ? chunks * N : 0, 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* acc = db ? partial.data() + c * N : nullptr;
      for (int64_t r = c * M / chunks; r < (c + 1) * M / chunks; ++r) {
        const T* go = grad_out + r * N;
        const T* s = saved + r * N;
        T* gr = g + r * N;
        if constexpr (std::is_same_v<T, float>) {
          FASTAE_SEGMENT(act_grad_segment)(ACT, go, s, gr, acc, N);
          continue;
        }
        // Two loops rather than a test per element, so that both vectorize.
        if (acc) {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const float v = static_cast<float>(go[j]) * act_grad(ACT, static_cast<float>(s[j]));
            gr[j] = static_cast<T>(v);
            acc[j] += v;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j)
            gr[j] = static_cast<T>(static_cast<float>(go[j]) * act_grad(ACT, static_cast<float>(s[j])));
        }
      }
    }
  });
  if (db) {
    for (int64_t j = 0; j < N; ++j) db[j] = 0.0f;
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t j = 0; j < N; ++j) db[j] += partial[c * N + j];
  }
}

at::Tensor empty_like_none(const at::Tensor& x) { return at::empty({0}, x.options()); }

std::tuple<at::Tensor, at::Tensor> linear_act_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, int64_t act,
                                                      bool save_preact) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "fastae_C::linear_act_fwd: expected x [M, K] and weight [N, K], got ", x.sizes(), " and ",
              weight.sizes());
  at::Tensor pre = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  if (act == kNone) return {pre, empty_like_none(x)};
  at::Tensor out = save_preact ? at::empty_like(pre) : pre;  // in place when nobody needs pre
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_act_fwd_cpu", [&] {
    dispatch_activation(act, [&](auto a) {
      apply_forward<decltype(a)::value>(pre.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                        pre.numel());
    });
  });
  return {out, save_preact ? pre : empty_like_none(x)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                  const at::Tensor& weight, const at::Tensor& saved,
                                                                  int64_t act, bool need_x, bool need_w,
                                                                  bool need_b) {
  const int64_t M = grad_out.size(0), N = grad_out.size(1);
  TORCH_CHECK(act == kNone || saved.sizes() == grad_out.sizes(),
              "fastae_C::linear_act_bwd: saved must match grad_out ", grad_out.sizes(), ", got ", saved.sizes());
  at::Tensor g, db;
  if (act == kNone) {
    g = grad_out;
    if (need_b) db = grad_out.sum(0);
  } else {
    g = at::empty({M, N}, grad_out.options());
    at::Tensor go = grad_out.contiguous(), sv = saved.contiguous();
    at::Tensor db32 = need_b ? at::empty({N}, grad_out.options().dtype(at::kFloat)) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "linear_act_bwd_cpu", [&] {
      dispatch_activation(act, [&](auto a) {
        grad_preactivation<decltype(a)::value>(go.const_data_ptr<scalar_t>(), sv.const_data_ptr<scalar_t>(),
                                               g.mutable_data_ptr<scalar_t>(),
                                               need_b ? db32.mutable_data_ptr<float>() : nullptr, M, N);
      });
    });
    if (need_b) db = db32.to(grad_out.scalar_type());
  }
  return {need_x ? at::mm(g, weight) : empty_like_none(x), need_w ? at::mm(g.t(), x) : empty_like_none(x),
          need_b ? db : empty_like_none(x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("linear_act_fwd", &linear_act_fwd_cpu);
  m.impl("linear_act_bwd", &linear_act_bwd_cpu);
}

}  // namespace fastae
