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

#include "convert.h"
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

// A tensor's data and dtype as for_segments reads or writes it (data null: an output not wanted).
struct In {
  const void* data;
  at::ScalarType type;
};
struct Out {
  void* data;
  at::ScalarType type;
};

In in_of(const at::Tensor& t) { return {t.const_data_ptr(), t.scalar_type()}; }
Out out_of(const at::Tensor& t, bool wanted) { return {wanted ? t.mutable_data_ptr() : nullptr, t.scalar_type()}; }

// fp32 view of in[i, i + len): the data itself for float, else converted into buf.
const float* load_segment(const In& in, int64_t i, int64_t len, float* buf) {
  switch (in.type) {
    case at::kFloat: return static_cast<const float*>(in.data) + i;
    case at::kBFloat16: to_float(static_cast<const c10::BFloat16*>(in.data) + i, buf, len); return buf;
    case at::kHalf: to_float(static_cast<const c10::Half*>(in.data) + i, buf, len); return buf;
    case at::kDouble: to_float(static_cast<const double*>(in.data) + i, buf, len); return buf;
    default: TORCH_CHECK(false, "fastae_C: unsupported dtype ", in.type);
  }
}

// Where a segment's fp32 results go: out itself for float, else buf (written back by store_segment).
float* segment_target(const Out& out, int64_t i, float* buf) {
  if (!out.data) return nullptr;
  return out.type == at::kFloat ? static_cast<float*>(out.data) + i : buf;
}

void store_segment(const Out& out, int64_t i, int64_t len, const float* buf) {
  switch (out.type) {
    case at::kBFloat16: from_float(buf, static_cast<c10::BFloat16*>(out.data) + i, len); break;
    case at::kHalf: from_float(buf, static_cast<c10::Half*>(out.data) + i, len); break;
    case at::kDouble: from_float(buf, static_cast<double*>(out.data) + i, len); break;
    default: break;  // float: written in place
  }
}

// Runs seg(offset, length, x, y) over [0, n) in segments that never cross a multiple of
// `period` (so per-feature weights stay aligned), handing it fp32 pointers: the tensors' own for
// float, converted copies otherwise (each tensor in its own dtype: a bf16 input beside a float32
// target is read as it is, with no converted copy of the whole tensor). Returns the sum of seg's
// results.
template <int NIn, int NOut, typename Seg>
double for_segments(int64_t n, int64_t period, const In (&in)[NIn], const Out (&out)[NOut], Seg&& seg) {
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
        for (int k = 0; k < NIn; ++k) x[k] = load_segment(in[k], i, len, in_buf[k]);
        for (int k = 0; k < NOut; ++k) y[k] = segment_target(out[k], i, out_buf[k]);
        partial[b] += seg(i, len, x, y);
        for (int k = 0; k < NOut; ++k)
          if (out[k].data) store_segment(out[k], i, len, out_buf[k]);
        i += len;
      }
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor reduced(double total, int64_t reduction, float scale, const at::TensorOptions& options) {
  return at::scalar_tensor(total * scale, options);
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
  // The loss in the dtype the two promote to (as torch's losses), the gradient in input's.
  const at::ScalarType loss_type = at::promote_types(input.scalar_type(), target.scalar_type());
  at::Tensor loss = none ? at::empty_like(input, input.options().dtype(loss_type)) : at::Tensor();
  at::Tensor grad = need_grad ? at::empty_like(input) : at::empty({0}, input.options());
  std::vector<int64_t> invalid(at::get_num_threads() + 1, 0);
  const In in[2] = {in_of(input), in_of(target)};
  const Out out[2] = {out_of(loss, none), out_of(grad, need_grad)};
  const double total = for_segments<2, 2>(n, period, in, out, [&](int64_t i, int64_t len, auto& x, auto& y) {
    return FASTAE_SEGMENT(recon_loss_segment)(static_cast<int>(kind), x[0], x[1], wp ? wp + i % period : nullptr,
                                              len, scale, y[0], y[1], &invalid[at::get_thread_num()]);
  });
  int64_t bad = 0;
  for (int64_t v : invalid) bad += v;
  // The same words as F.binary_cross_entropy.
  TORCH_CHECK(bad == 0, "all elements of input should be between 0 and 1");
  return {none ? loss : reduced(total, reduction, scale, input.options().dtype(loss_type)), grad};
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
  const In in[2] = {in_of(mu), in_of(logvar)};
  const Out out[3] = {out_of(loss, none), out_of(dmu, need_grad), out_of(dlv, need_grad)};
  const double total = for_segments<2, 3>(n, std::max<int64_t>(n, 1), in, out,
                                          [&](int64_t, int64_t len, auto& x, auto& y) {
                                            return FASTAE_SEGMENT(gaussian_kl_segment)(x[0], x[1], len, scale, y[0],
                                                                                       y[1], y[2]);
                                          });
  return {none ? loss : reduced(total, reduction, scale, mu.options()), dmu, dlv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("recon_loss_fwd", &recon_loss_fwd_cpu);
  m.impl("gaussian_kl_fwd", &gaussian_kl_fwd_cpu);
}

}  // namespace fastae
