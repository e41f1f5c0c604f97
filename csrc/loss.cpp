// CPU kernels of fastae_C::recon_loss_fwd and fastae_C::gaussian_kl_fwd: one pass over the inputs
// that produces the reduced loss and, when asked, the gradient (so backward is only a scale).
// Work is split into fixed blocks whose partial sums are added in block order, so results do
// not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#define FASTAE_CAP_NS baseline
#include "loss_kernels.h"
#undef FASTAE_CAP_NS

#include "vec_dispatch.h"

namespace fastae {

namespace {

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2, kBatch = 3 };
constexpr int64_t kBlock = 1 << 15;  // elements per parallel task
constexpr int64_t kSegment = 1024;   // elements per fp32 staging buffer

float reduction_scale(int64_t reduction, int64_t numel, int64_t batch) {
  if (reduction == kMean) return numel ? 1.0f / numel : 0.0f;
  if (reduction == kBatch) return batch ? 1.0f / batch : 0.0f;
  return 1.0f;
}

// Runs seg(offset, length, x, y, loss, g0, g1) over [0, n) in segments that never cross a
// multiple of `period` (so per-feature weights stay aligned), handing it fp32 pointers:
// the tensors' own for float, converted copies otherwise. Returns the sum of seg's results.
template <typename T, int NIn, int NOut, typename Seg>
double for_segments(int64_t n, int64_t period, const T* const (&in)[NIn], T* const (&out)[NOut], Seg&& seg) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    float in_buf[NIn][kSegment], out_buf[NOut][kSegment];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t end = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < end;) {
        const int64_t len = std::min({kSegment, end - i, period - i % period});
        const float* x[NIn];
        float* y[NOut];
        for (int k = 0; k < NIn; ++k) {
          if constexpr (std::is_same_v<T, float>) {
            x[k] = in[k] + i;
          } else {
            for (int64_t j = 0; j < len; ++j) in_buf[k][j] = static_cast<float>(in[k][i + j]);
            x[k] = in_buf[k];
          }
        }
        for (int k = 0; k < NOut; ++k) {
          if constexpr (std::is_same_v<T, float>) y[k] = out[k] ? out[k] + i : nullptr;
          else y[k] = out[k] ? out_buf[k] : nullptr;
        }
        partial[b] += seg(i, len, x, y);
        if constexpr (!std::is_same_v<T, float>) {
          for (int k = 0; k < NOut; ++k)
            if (out[k])
              for (int64_t j = 0; j < len; ++j) out[k][i + j] = static_cast<T>(out_buf[k][j]);
        }
        i += len;
      }
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor reduced(double total, int64_t reduction, float scale, const at::Tensor& like) {
  return at::scalar_tensor(total * scale, like.options());
}

std::tuple<at::Tensor, at::Tensor> recon_loss_fwd_cpu(const at::Tensor& input, const at::Tensor& target,
                                                      const std::optional<at::Tensor>& weight, int64_t kind,
                                                      int64_t reduction, int64_t batch, bool need_grad) {
  TORCH_CHECK(input.sizes() == target.sizes() && input.is_contiguous() && target.is_contiguous(),
              "fastae_C::recon_loss_fwd: expected contiguous input and target of one shape");
  const int64_t n = input.numel();
  // An empty weight only comes with an empty input; a period of 1 then keeps the modulo defined.
  const int64_t period = std::max<int64_t>(weight.has_value() ? weight->numel() : n, 1);
  TORCH_CHECK(n % period == 0, "fastae_C::recon_loss_fwd: weight size ", period, " does not divide ", n);
  const at::Tensor w = weight.has_value() ? weight->to(at::kFloat).contiguous() : at::Tensor();
  const float* wp = weight.has_value() ? w.const_data_ptr<float>() : nullptr;
  const bool none = reduction == kNone;
  const float scale = reduction_scale(reduction, n, batch);
  at::Tensor loss = none ? at::empty_like(input) : at::Tensor();
  at::Tensor grad = need_grad ? at::empty_like(input) : at::empty({0}, input.options());
  std::vector<int64_t> invalid(at::get_num_threads() + 1, 0);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "recon_loss_fwd_cpu", [&] {
    const scalar_t* const in[2] = {input.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>()};
    scalar_t* const out[2] = {none ? loss.mutable_data_ptr<scalar_t>() : nullptr,
                              need_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr};
    total = for_segments<scalar_t, 2, 2>(n, period, in, out, [&](int64_t i, int64_t len, auto& x, auto& y) {
      return FASTAE_SEGMENT(recon_loss_segment)(static_cast<int>(kind), x[0], x[1], wp ? wp + i % period : nullptr,
                                                len, scale, y[0], y[1], &invalid[at::get_thread_num()]);
    });
  });
  int64_t bad = 0;
  for (int64_t v : invalid) bad += v;
  // The same words as F.binary_cross_entropy.
  TORCH_CHECK(bad == 0, "all elements of input should be between 0 and 1");
  return {none ? loss : reduced(total, reduction, scale, input), grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_fwd_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                                                   int64_t reduction, int64_t batch, bool need_grad) {
  TORCH_CHECK(mu.sizes() == logvar.sizes() && mu.is_contiguous() && logvar.is_contiguous(),
              "fastae_C::gaussian_kl_fwd: expected contiguous mu and logvar of one shape");
  const int64_t n = mu.numel();
  const bool none = reduction == kNone;
  const float scale = reduction_scale(reduction, n, batch);
  at::Tensor loss = none ? at::empty_like(mu) : at::Tensor();
  at::Tensor dmu = need_grad ? at::empty_like(mu) : at::empty({0}, mu.options());
  at::Tensor dlv = need_grad ? at::empty_like(mu) : at::empty({0}, mu.options());
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "gaussian_kl_fwd_cpu", [&] {
    const scalar_t* const in[2] = {mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>()};
    scalar_t* const out[3] = {none ? loss.mutable_data_ptr<scalar_t>() : nullptr,
                              need_grad ? dmu.mutable_data_ptr<scalar_t>() : nullptr,
                              need_grad ? dlv.mutable_data_ptr<scalar_t>() : nullptr};
    total = for_segments<scalar_t, 2, 3>(n, std::max<int64_t>(n, 1), in, out,
                                         [&](int64_t, int64_t len, auto& x, auto& y) {
                                           return FASTAE_SEGMENT(gaussian_kl_segment)(x[0], x[1], len, scale, y[0],
                                                                                      y[1], y[2]);
                                         });
  });
  return {none ? loss : reduced(total, reduction, scale, mu), dmu, dlv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("recon_loss_fwd", &recon_loss_fwd_cpu);
  m.impl("gaussian_kl_fwd", &gaussian_kl_fwd_cpu);
}

}  // namespace fastae
