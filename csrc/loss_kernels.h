// Element-wise reconstruction losses and the Gaussian KL term, written once on
// at::vec::Vectorized<float> and compiled once per CPU capability: loss.cpp includes this file for
// the baseline build, loss_avx2.cpp and loss_avx512.cpp for those (picked at run time). Each
// function handles one contiguous fp32 segment and returns the sum of its losses; loss.cpp splits
// tensors into segments, runs them in parallel and converts other dtypes.
//
// Include with FASTAE_CAP_NS defined: the namespace these functions are compiled into.
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace fastae {
namespace FASTAE_CAP_NS {

using Vec = at::vec::Vectorized<float>;

enum LossKind : int { kMse = 0, kL1 = 1, kBce = 2, kBceLogits = 3 };

// loss and d loss / d x of one vector of elements; formulas as PyTorch's CPU kernels write them,
// so that results agree to rounding.
template <int KIND>
inline void loss_and_grad(const Vec& x, const Vec& t, Vec& loss, Vec& grad) {
  const Vec zero(0.0f), one(1.0f);
  if constexpr (KIND == kMse) {
    const Vec d = x - t;
    loss = d * d;
    grad = d * Vec(2.0f);
  } else if constexpr (KIND == kL1) {
    const Vec d = x - t;
    loss = d.abs();
    grad = Vec::blendv(zero, one, d > zero) - Vec::blendv(zero, one, d < zero);
  } else if constexpr (KIND == kBce) {
    // (t - 1) * max(log1p(-x), -100) - t * max(log(x), -100), as F.binary_cross_entropy
    const Vec floor(-100.0f);
    loss = (t - one) * at::vec::maximum(x.neg().log1p(), floor) - t * at::vec::maximum(x.log(), floor);
    grad = (x - t) / at::vec::maximum((one - x) * x, Vec(1e-12f));
  } else {
    // (1 - t) * x - log_sigmoid(x), log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)): stable for any x
    loss = (one - t) * x - at::vec::minimum(x, zero) + x.abs().neg().exp().log1p();
    grad = one / (one + x.neg().exp()) - t;
  }
}

// Sum of the (weighted) losses of x[0:n] against t[0:n]. Writes the element-wise loss to loss_out
// and scale * d loss / d x to grad_out when they are not null; w (the weights of these elements)
// may be null. For kBce, counts inputs outside [0, 1] (NaN included) into *invalid.
template <int KIND>
double recon_segment(const float* x, const float* t, const float* w, int64_t n, float scale, float* loss_out,
                     float* grad_out, int64_t* invalid) {
  constexpr int64_t V = Vec::size();
  Vec acc(0.0f);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const Vec xv = Vec::loadu(x + i, m), tv = Vec::loadu(t + i, m);
    Vec loss, grad;
    loss_and_grad<KIND>(xv, tv, loss, grad);
    if (w) {
      const Vec wv = Vec::loadu(w + i, m);
      loss = loss * wv;
      grad = grad * wv;
    }
    if (loss_out) loss.store(loss_out + i, m);
    if (grad_out) (grad * Vec(scale)).store(grad_out + i, m);
    acc = acc + (m == V ? loss : Vec::set(Vec(0.0f), loss, m));  // the tail's padding is no loss
    if constexpr (KIND == kBce) {
      const Vec ok = (xv >= Vec(0.0f)) & (xv <= Vec(1.0f));
      float flags[V];
      Vec::blendv(Vec(1.0f), Vec(0.0f), ok).store(flags);
      for (int64_t k = 0; k < m; ++k) bad += flags[k] != 0.0f;
    }
  }
  if constexpr (KIND == kBce) *invalid += bad;
  float lanes[V];
  acc.store(lanes);
  double sum = 0.0;
  for (int64_t k = 0; k < V; ++k) sum += lanes[k];
  return sum;
}

double recon_loss_segment(int kind, const float* x, const float* t, const float* w, int64_t n, float scale,
                          float* loss_out, float* grad_out, int64_t* invalid) {
  switch (kind) {
    case kMse: return recon_segment<kMse>(x, t, w, n, scale, loss_out, grad_out, invalid);
    case kL1: return recon_segment<kL1>(x, t, w, n, scale, loss_out, grad_out, invalid);
    case kBce: return recon_segment<kBce>(x, t, w, n, scale, loss_out, grad_out, invalid);
    default: return recon_segment<kBceLogits>(x, t, w, n, scale, loss_out, grad_out, invalid);
  }
}

// -1/2 (1 + lv - mu^2 - exp(lv)) summed over mu[0:n], logvar[0:n]; gradients scaled by `scale`.
double gaussian_kl_segment(const float* mu, const float* lv, int64_t n, float scale, float* loss_out,
                           float* dmu_out, float* dlv_out) {
  constexpr int64_t V = Vec::size();
  const Vec half(0.5f), one(1.0f), s(scale);
  Vec acc(0.0f);
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const Vec mv = Vec::loadu(mu + i, m), lvv = Vec::loadu(lv + i, m);
    const Vec e = lvv.exp();
    const Vec loss = half * (mv * mv + e - one - lvv);
    if (loss_out) loss.store(loss_out + i, m);
    if (dmu_out) (mv * s).store(dmu_out + i, m);
    if (dlv_out) (half * (e - one) * s).store(dlv_out + i, m);
    acc = acc + (m == V ? loss : Vec::set(Vec(0.0f), loss, m));
  }
  float lanes[V];
  acc.store(lanes);
  double sum = 0.0;
  for (int64_t k = 0; k < V; ++k) sum += lanes[k];
  return sum;
}

}  // namespace FASTAE_CAP_NS
}  // namespace fastae
