// Element-wise reconstruction losses and the Gaussian KL term, written once on
// at::vec::Vectorized<float> and compiled once per CPU capability: loss.cpp includes this file for
// the baseline build, loss_avx2.cpp and loss_avx512.cpp for those (picked at run time). Each
// function handles one contiguous fp32 segment and returns the sum of its losses; loss.cpp splits
// tensors into segments, runs them in parallel and converts other dtypes.
//
// Include with FASTAE_CAP_NS defined: the namespace these functions are compiled into.
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "activation.h"

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

// ---- activations of linear_act (csrc/linear_act.cpp), same formulas as activation.h ----

template <int ACT>
inline Vec act_forward_vec(const Vec& x) {
  const Vec zero(0.0f), one(1.0f), half(0.5f);
  if constexpr (ACT == kRelu) return Vec::blendv(x, zero, x < zero);  // NaN passes, as torch.relu
  else if constexpr (ACT == kLeakyRelu) return Vec::blendv(x, x * Vec(kLeakySlope), x < zero);
  else if constexpr (ACT == kGelu) return half * x * (one + (x * Vec(kSqrt1_2)).erf());
  else if constexpr (ACT == kGeluTanh)
    return half * x * (one + (Vec(kSqrt2_Pi) * (x + Vec(kGeluTanhC) * x * x * x)).tanh());
  else if constexpr (ACT == kSigmoid) return one / (one + x.neg().exp());
  else if constexpr (ACT == kTanh) return x.tanh();
  else if constexpr (ACT == kSilu) return x / (one + x.neg().exp());
  else return x;
}

// d act / d pre from the saved value (the output where grad_from_output(ACT), else the pre-activation).
template <int ACT>
inline Vec act_grad_vec(const Vec& s) {
  const Vec zero(0.0f), one(1.0f), half(0.5f);
  if constexpr (ACT == kRelu) return Vec::blendv(zero, one, s > zero);
  else if constexpr (ACT == kLeakyRelu) return Vec::blendv(Vec(kLeakySlope), one, s > zero);
  else if constexpr (ACT == kSigmoid) return s * (one - s);
  else if constexpr (ACT == kTanh) return one - s * s;
  else if constexpr (ACT == kGelu) {
    const Vec cdf = half * (one + (s * Vec(kSqrt1_2)).erf());
    const Vec pdf = Vec(kInvSqrt2Pi) * (s * s * Vec(-0.5f)).exp();
    return cdf + s * pdf;
  } else if constexpr (ACT == kGeluTanh) {
    const Vec s2 = s * s;
    const Vec t = (Vec(kSqrt2_Pi) * s * (one + Vec(kGeluTanhC) * s2)).tanh();
    return half * (one + t) + half * s * (one - t * t) * Vec(kSqrt2_Pi) * (one + Vec(3.0f * kGeluTanhC) * s2);
  } else if constexpr (ACT == kSilu) {
    const Vec sg = one / (one + s.neg().exp());
    return sg * (one + s * (one - sg));
  } else return one;
}

template <int ACT>
void act_forward_impl(const float* pre, float* out, int64_t n) {
  constexpr int64_t V = Vec::size();
  int64_t i = 0;
  for (; i + V <= n; i += V) act_forward_vec<ACT>(Vec::loadu(pre + i)).store(out + i);
  if (i < n) act_forward_vec<ACT>(Vec::loadu(pre + i, n - i)).store(out + i, n - i);
}

template <int ACT>
void act_grad_impl(const float* go, const float* saved, float* g, float* acc, int64_t n) {
  constexpr int64_t V = Vec::size();
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const Vec v = Vec::loadu(go + i, m) * act_grad_vec<ACT>(Vec::loadu(saved + i, m));
    v.store(g + i, m);
    if (acc) (Vec::loadu(acc + i, m) + v).store(acc + i, m);
  }
}

#define FASTAE_ACT_CASES(call)                              \
  switch (act) {                                            \
    case kRelu: call(kRelu); break;                         \
    case kLeakyRelu: call(kLeakyRelu); break;               \
    case kGelu: call(kGelu); break;                         \
    case kGeluTanh: call(kGeluTanh); break;                 \
    case kSigmoid: call(kSigmoid); break;                   \
    case kTanh: call(kTanh); break;                         \
    case kSilu: call(kSilu); break;                         \
    default: call(kNone); break;                            \
  }

// out[0:n] = act(pre[0:n]) (in place allowed).
void act_forward_segment(int act, const float* pre, float* out, int64_t n) {
#define FASTAE_CALL(A) act_forward_impl<A>(pre, out, n)
  FASTAE_ACT_CASES(FASTAE_CALL)
#undef FASTAE_CALL
}

// g[0:n] = go * act'(saved), and acc[0:n] += g when acc is not null.
void act_grad_segment(int act, const float* go, const float* saved, float* g, float* acc, int64_t n) {
#define FASTAE_CALL(A) act_grad_impl<A>(go, saved, g, acc, n)
  FASTAE_ACT_CASES(FASTAE_CALL)
#undef FASTAE_CALL
}
#undef FASTAE_ACT_CASES

}  // namespace FASTAE_CAP_NS
}  // namespace fastae
