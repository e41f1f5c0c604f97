// Activation functions and their derivatives, shared by the C++ (CPU) and CUDA kernels.
// The integer ids are part of the fastae_C op schema; the same order is used by
// fastae/ops/linear_act.py (ACTIVATIONS) and kernels/linear_act.py.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FASTAE_HD __host__ __device__ __forceinline__
#else
#define FASTAE_HD inline
#endif

namespace fastae {

enum Activation : int {
  kNone = 0,
  kRelu = 1,
  kLeakyRelu = 2,  // negative slope 0.01, as F.leaky_relu's default
  kGelu = 3,       // exact (erf) form
  kGeluTanh = 4,   // tanh approximation
  kSigmoid = 5,
  kTanh = 6,
  kSilu = 7,
  kNumActivations = 8,
};

constexpr float kLeakySlope = 0.01f;
constexpr float kSqrt1_2 = 0.70710678118654752440f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1/sqrt(2*pi)
constexpr float kSqrt2_Pi = 0.79788456080286535588f;    // sqrt(2/pi)
constexpr float kGeluTanhC = 0.044715f;

// The derivative of these can be computed from the activation's output alone, so the
// backward pass needs only the output (which autograd keeps anyway) and no pre-activation.
FASTAE_HD bool grad_from_output(int act) {
  return act == kNone || act == kRelu || act == kLeakyRelu || act == kSigmoid || act == kTanh;
}

FASTAE_HD float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

FASTAE_HD float act_forward(int act, float x) {
  switch (act) {
    // `x < 0 ? .. : x` lets NaN through, as torch.relu does.
    case kRelu: return x < 0.0f ? 0.0f : x;
    case kLeakyRelu: return x < 0.0f ? x * kLeakySlope : x;
    case kGelu: return 0.5f * x * (1.0f + erff(x * kSqrt1_2));
    case kGeluTanh: {
      const float u = kSqrt2_Pi * (x + kGeluTanhC * x * x * x);
      return 0.5f * x * (1.0f + tanhf(u));
    }
    case kSigmoid: return sigmoidf_(x);
    case kTanh: return tanhf(x);
    case kSilu: return x * sigmoidf_(x);
    default: return x;
  }
}

// d act / d pre, given the saved value: the output y for grad_from_output(act), else the
// pre-activation x.
FASTAE_HD float act_grad(int act, float saved) {
  switch (act) {
    case kRelu: return saved > 0.0f ? 1.0f : 0.0f;
    case kLeakyRelu: return saved > 0.0f ? 1.0f : kLeakySlope;
    case kSigmoid: return saved * (1.0f - saved);
    case kTanh: return 1.0f - saved * saved;
    case kGelu: {
      const float x = saved;
      const float cdf = 0.5f * (1.0f + erff(x * kSqrt1_2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      return cdf + x * pdf;
    }
    case kGeluTanh: {
      const float x = saved;
      const float x2 = x * x;
      const float t = tanhf(kSqrt2_Pi * x * (1.0f + kGeluTanhC * x2));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2_Pi * (1.0f + 3.0f * kGeluTanhC * x2);
    }
    case kSilu: {
      const float s = sigmoidf_(saved);
      return s * (1.0f + saved * (1.0f - s));
    }
    default: return 1.0f;
  }
}

}  // namespace fastae
