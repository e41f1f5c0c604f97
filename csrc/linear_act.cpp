// CPU kernels of fastae_C::linear_act_{fwd,bwd} and fused_mlp: the GEMMs go to oneDNN's inner product
// (fp32, and bf16 forward) or at::addmm / at::mm, and everything elementwise around them — the bias
// folded into the GEMM; the activation in forward (in oneDNN's epilogue where it runs the GEMM and
// nobody needs the pre-activation); the activation derivative and the bias-gradient reduction in
// backward — is one parallel pass over the [M, N] output instead of the several eager ops autograd
// would run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "activation.h"
#include "convert.h"
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
// half/bf16: blocks converted to fp32 (convert.h's vectorized conversions) and run through the
// fp32 Vectorized kernels below. The scalar loop with a conversion per element was ~10x slower,
// and c10's per-element casts for the blocks still took 0.96 ms of a 4 ms bf16 fused_mlp fwd+bwd
// at batch 256 (measured with the profiler).
constexpr int64_t kConvertBlock = 1024;

template <int ACT, typename T>
void apply_forward(const T* pre, T* out, int64_t n) {
  const auto kernel = FASTAE_SEGMENT(act_forward_segment);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    float buf[kConvertBlock];
    for (int64_t i = begin; i < end; i += kConvertBlock) {
      const int64_t len = std::min(kConvertBlock, end - i);
      to_float(pre + i, buf, len);
      kernel(ACT, buf, buf, len);
      from_float(buf, out + i, len);
    }
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
  [[maybe_unused]] const auto vec_kernel = FASTAE_SEGMENT(act_grad_segment);  // fp32 rows
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* acc = db ? partial.data() + c * N : nullptr;
      for (int64_t r = c * M / chunks; r < (c + 1) * M / chunks; ++r) {
        const T* go = grad_out + r * N;
        const T* s = saved + r * N;
        T* gr = g + r * N;
        if constexpr (std::is_same_v<T, float>) {
          vec_kernel(ACT, go, s, gr, acc, N);
        } else {  // half/bf16: through fp32 and the Vectorized kernel in blocks (see apply_forward)
          float gf[kConvertBlock], sf[kConvertBlock];
          for (int64_t j = 0; j < N; j += kConvertBlock) {
            const int64_t len = std::min(kConvertBlock, N - j);
            to_float(go + j, gf, len);
            to_float(s + j, sf, len);
            vec_kernel(ACT, gf, sf, gf, acc ? acc + j : nullptr, len);
            from_float(gf, gr + j, len);
          }
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

// a @ b.T (+ bias). fp32 goes through oneDNN's inner product (torch's mkldnn::_linear_pointwise)
// when this torch has it: at the autoencoder shapes it is 1.1-1.6x faster than at::addmm / at::mm
// (MKL sgemm) on the 2-core Zen 4 machine of README (4096x784x128: 4.2 ms against 4.9-6.8 ms),
// b may be a transposed view. Not everywhere: measured per GEMM at batch 4096 (ms, MKL / oneDNN),
//   in->out   forward      dX           dW
//   784->128  5.25 / 4.06  4.73 / 4.17  6.31 / 5.77
//   128->64   0.38 / 0.37  0.36 / 0.34  0.45 / 1.19
//   64->128   0.36 / 0.40  0.36 / 0.33  0.47 / 1.24
//   128->784  4.43 / 4.67  4.81 / 4.12  5.12 / 10.38
// so the callers ask for it (prefer_onednn) for dX always, forward when in >= out, dW when
// in >= 4 out. On Intel CPUs MKL is as fast or faster at every one of these GEMMs (2-core Xeon
// with AMX, CPU ms of both threads, MKL / oneDNN, batch 4096: 784->128 dW 12.3 / 16.9, 128->784
// dW 11.5 / 31.9, forward and dX within 5% either way; batch 256: 128->64 dX 0.07 / 0.15, 784->128
// dW 0.65 / 0.92), so there oneDNN is not used. FASTAE_CPU_ONEDNN=0 turns it off everywhere, =1
// on everywhere (as measured per GEMM above); other dtypes use at::addmm / at::mm, except bf16
// forward GEMMs, which go to oneDNN wherever it is in use (layer_forward).
bool cpu_is_intel() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  char vendor[13];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, "GenuineIntel") == 0;
#else
  return false;
#endif
}

using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   c10::string_view, c10::List<std::optional<c10::Scalar>>,
                                   std::optional<c10::string_view>);

const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear() {
  static const std::optional<c10::TypedOperatorHandle<LinearPointwise>> op =
      []() -> std::optional<c10::TypedOperatorHandle<LinearPointwise>> {
    const char* env = std::getenv("FASTAE_CPU_ONEDNN");
    if (env != nullptr && std::strcmp(env, "0") == 0) return std::nullopt;
    const bool forced = env != nullptr && std::strcmp(env, "1") == 0;
    if (!forced && cpu_is_intel()) return std::nullopt;
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return std::nullopt;
    return handle->typed<LinearPointwise>();
  }();
  return op;
}

// oneDNN's inner product has a fixed cost per call (~12 us more than MKL's sgemm on the 2-core Zen 4
// machine: 1x784x128 0.019 against 0.008 ms, 256x128x64 0.036 against 0.028 ms) that only GEMMs of
// several million multiply-adds repay (256x784x128, 25.7 M: 0.252 against 0.268 ms); below this
// size MKL runs them.
constexpr int64_t kOnednnMinMacs = int64_t{1} << 23;

bool onednn_gemm(int64_t m, int64_t n, int64_t k, at::ScalarType dtype, bool bf16_too = false) {
  return (dtype == at::kFloat || (bf16_too && dtype == at::kBFloat16)) && m > 0 && n > 0 && k > 0 &&
         m * n * k >= kOnednnMinMacs && onednn_linear().has_value();
}

at::Tensor matmul_nt(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                     bool prefer_onednn) {
  const auto& op = onednn_linear();
  if (prefer_onednn && onednn_gemm(a.size(0), b.size(0), a.size(1), a.scalar_type())) {
    return op->call(a, b, bias, "none", c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }
  return bias.has_value() ? at::addmm(*bias, a, b.t()) : at::mm(a, b.t());
}

// Whether a layer's weight gradient goes to oneDNN (measured faster for a wide input, K >= 4N,
// where oneDNN is in use and the GEMM is fp32, as matmul_nt takes it) and so needs g.T contiguous;
// MKL reads the transposed view as it is, and a copy of it would cost as much as an elementwise pass.
bool onednn_dw_gemm(const at::Tensor& weight, const at::Tensor& g) {
  return weight.size(1) >= 4 * weight.size(0) && onednn_gemm(weight.size(0), weight.size(1), g.size(0), g.scalar_type());
}

// oneDNN's name, scalars and algorithm for an activation it applies in its GEMM's epilogue.
struct OnednnAttr {
  const char* name;
  c10::List<std::optional<c10::Scalar>> scalars;
  std::optional<c10::string_view> algorithm;
};

OnednnAttr onednn_attr(int64_t act) {
  c10::List<std::optional<c10::Scalar>> none;
  switch (act) {
    case kRelu: return {"relu", none, std::nullopt};
    case kLeakyRelu: {
      c10::List<std::optional<c10::Scalar>> slope;
      slope.push_back(c10::Scalar(0.01));
      return {"leaky_relu", slope, std::nullopt};
    }
    case kGelu: return {"gelu", none, c10::string_view("none")};
    case kGeluTanh: return {"gelu", none, c10::string_view("tanh")};
    case kSigmoid: return {"sigmoid", none, std::nullopt};
    case kTanh: return {"tanh", none, std::nullopt};
    case kSilu: return {"swish", none, std::nullopt};
    default: return {"none", none, std::nullopt};
  }
}

// One layer's forward: (y = act(h @ w.T + b), the pre-activation; y itself, written over, when
// keep_pre is false). Where oneDNN's inner product runs the GEMM (fp32 as matmul_nt chooses; bf16
// always where oneDNN is in use) it adds the bias and, when nobody needs the pre-activation, applies
// the activation in its epilogue, on the fp32 accumulator: no pass over the output after it. bf16
// at batch 65536 on the 2-core Zen 4 (ms): 128->784 + sigmoid 99 with at::addmm and torch.sigmoid,
// 68 in oneDNN (58.6 without the sigmoid); 784->128 + relu 34.7 -> 32.4; batch 4096 3.04 -> 2.70
// and 1.96 -> 1.88; batch 256 0.225 -> 0.182 and 0.151 -> 0.139. at::addmm first copies the
// bias into every row of its output (22 ms of a 290 ms bf16 train step at batch 65536).
std::tuple<at::Tensor, at::Tensor> layer_forward(const at::Tensor& h, const at::Tensor& w,
                                                 const std::optional<at::Tensor>& bias, int64_t act, bool keep_pre) {
  const bool bf16 = h.scalar_type() == at::kBFloat16;
  at::Tensor pre;
  if ((bf16 || w.size(1) >= w.size(0)) && onednn_gemm(h.size(0), w.size(0), h.size(1), h.scalar_type(), true)) {
    const bool fused = act != kNone && !keep_pre;
    const OnednnAttr attr = onednn_attr(fused ? act : kNone);
    pre = onednn_linear()->call(h, w, bias, attr.name, attr.scalars, attr.algorithm);
    if (fused || act == kNone) return {pre, pre};
  } else {
    pre = matmul_nt(h, w, bias, false);
    if (act == kNone) return {pre, pre};
  }
  at::Tensor y = keep_pre ? at::empty_like(pre) : pre;  // in place when nobody needs pre
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "layer_forward_cpu", [&] {
    dispatch_activation(act, [&](auto a) {
      apply_forward<decltype(a)::value>(pre.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), pre.numel());
    });
  });
  return {y, pre};
}

std::tuple<at::Tensor, at::Tensor> linear_act_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, int64_t act,
                                                      bool save_preact) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "fastae_C::linear_act_fwd: expected x [M, K] and weight [N, K], got ", x.sizes(), " and ",
              weight.sizes());
  const bool keep_pre = save_preact && act != kNone;
  auto [out, pre] = layer_forward(x, weight, bias, act, keep_pre);
  return {out, keep_pre ? pre : empty_like_none(x)};
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
  const bool onednn_dw = onednn_dw_gemm(weight, g);
  return {need_x ? matmul_nt(g, weight.t(), std::nullopt, true) : empty_like_none(x),
          need_w ? matmul_nt(onednn_dw ? g.t().contiguous() : g.t(), x.t(), std::nullopt, onednn_dw)
                 : empty_like_none(x),
          need_b ? db : empty_like_none(x)};
}


// ---------------------------------------------------------------------------------------------
// fused_mlp: every layer of act_i(h @ W_i.T + b_i) in one call, forward and backward, with the
// same GEMM choices and fused elementwise passes as linear_act and no Python or dispatcher
// round trip between layers. Forward keeps, when save, each hidden layer's output (the next
// layer's input, and the saved value of a grad-from-output activation) and the pre-activation of
// the others (gelu, gelu_tanh, silu); backward writes act' into the dX GEMM's output in place.

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> fused_mlp_fwd_cpu(
    const at::Tensor& x, at::TensorList weights, const c10::List<std::optional<at::Tensor>>& biases,
    at::IntArrayRef activations, bool save) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(biases.size()) == L && static_cast<int64_t>(activations.size()) == L,
              "fastae_C::fused_mlp_fwd: expected as many biases and activations as weights (", L, "), got ",
              biases.size(), " and ", activations.size());
  TORCH_CHECK(x.dim() == 2, "fastae_C::fused_mlp_fwd: expected x [M, K], got ", x.sizes());
  std::vector<at::Tensor> hidden, preacts;
  at::Tensor h = x, out;
  for (int64_t i = 0; i < L; ++i) {
    const at::Tensor& w = weights[i];
    const int64_t act = activations[i];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == h.size(1), "fastae_C::fused_mlp_fwd: layer ", i,
                " expected weight [N, ", h.size(1), "], got ", w.sizes());
    const std::optional<at::Tensor> b = biases.get(i);
    const bool keep_pre = save && !grad_from_output(static_cast<int>(act));
    auto [y, pre] = layer_forward(h, w, b, act, keep_pre);
    if (save) {
      preacts.push_back(keep_pre ? pre : empty_like_none(x));
      if (i + 1 < L) hidden.push_back(y);
    }
    h = y;
  }
  return {h, hidden, preacts};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> fused_mlp_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, at::TensorList weights, at::TensorList hidden,
    const at::Tensor& out, at::TensorList preacts, at::IntArrayRef activations, bool need_x, bool need_w,
    bool need_b) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(hidden.size()) == L - 1 && static_cast<int64_t>(preacts.size()) == L &&
                  static_cast<int64_t>(activations.size()) == L,
              "fastae_C::fused_mlp_bwd: expected ", L - 1, " hidden, ", L, " preacts and activations, got ",
              hidden.size(), ", ", preacts.size(), " and ", activations.size());
  const int64_t M = grad_out.size(0);
  std::vector<at::Tensor> dweights(L), dbiases(L);
  at::Tensor dh = grad_out.contiguous();
  bool dh_owned = false;  // dh is a fresh GEMM output that act' may overwrite in place
  at::Tensor dx = empty_like_none(x);
  for (int64_t i = L - 1; i >= 0; --i) {
    const at::Tensor& w = weights[i];
    const int64_t act = activations[i];
    const int64_t N = w.size(0);
    const at::Tensor& input = i == 0 ? x : hidden[i - 1];
    at::Tensor g, db;
    if (act == kNone) {
      g = dh;
      if (need_b) db = dh.sum(0);
    } else {
      const at::Tensor& sv0 = grad_from_output(static_cast<int>(act)) ? (i == L - 1 ? out : hidden[i]) : preacts[i];
      TORCH_CHECK(sv0.sizes() == dh.sizes(), "fastae_C::fused_mlp_bwd: layer ", i, " saved ", sv0.sizes(),
                  " does not match its gradient ", dh.sizes());
      const at::Tensor sv = sv0.contiguous();
      g = dh_owned ? dh : at::empty({M, N}, dh.options());
      at::Tensor db32 = need_b ? at::empty({N}, dh.options().dtype(at::kFloat)) : at::Tensor();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "fused_mlp_bwd_cpu", [&] {
        dispatch_activation(act, [&](auto a) {
          grad_preactivation<decltype(a)::value>(dh.const_data_ptr<scalar_t>(), sv.const_data_ptr<scalar_t>(),
                                                 g.mutable_data_ptr<scalar_t>(),
                                                 need_b ? db32.mutable_data_ptr<float>() : nullptr, M, N);
        });
      });
      if (need_b) db = db32.to(dh.scalar_type());
    }
    if (need_w) {
      const bool onednn_dw = onednn_dw_gemm(w, g);
      dweights[i] = matmul_nt(onednn_dw ? g.t().contiguous() : g.t(), input.t(), std::nullopt, onednn_dw);
    } else {
      dweights[i] = empty_like_none(x);
    }
    dbiases[i] = need_b ? db : empty_like_none(x);
    if (i > 0 || need_x) {
      at::Tensor next = matmul_nt(g, w.t(), std::nullopt, true);
      if (i == 0) dx = next;
      dh = next;
      dh_owned = true;
    }
  }
  return {dx, dweights, dbiases};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("linear_act_fwd", &linear_act_fwd_cpu);
  m.impl("linear_act_bwd", &linear_act_bwd_cpu);
  m.impl("fused_mlp_fwd", &fused_mlp_fwd_cpu);
  m.impl("fused_mlp_bwd", &fused_mlp_bwd_cpu);
}

}  // namespace fastae
