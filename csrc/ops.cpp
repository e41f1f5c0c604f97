// The module fastae._C and the schema of every native op. Kernels register themselves per
// device with TORCH_LIBRARY_IMPL(fastae_C, CPU|CUDA, m) in their own files.
//
// The namespace is fastae_C, not fastae: the public ops (torch.ops.fastae.*) are defined in
// Python so that they exist, and fall back to other backends, even when this module is absent.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing fastae._C loads this library and so runs the static op registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastae_C, m) {
  // act(x @ weight.T + bias); the second output is the pre-activation when save_preact, else empty.
  m.def("linear_act_fwd(Tensor x, Tensor weight, Tensor? bias, int activation, bool save_preact) -> (Tensor, Tensor)");
  // saved is the forward output for activations whose derivative follows from it, else the
  // pre-activation. Returns (grad_x, grad_weight, grad_bias), each empty when not needed.
  m.def(
      "linear_act_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor saved, int activation, bool need_x, "
      "bool need_w, bool need_b) -> (Tensor, Tensor, Tensor)");
  // The whole MLP h_{i+1} = act_i(h_i @ weights[i].T + biases[i]), h_0 = x [M, K]: (output; when save,
  // the L-1 hidden outputs and, per layer, its pre-activation where its activation's derivative
  // needs it (gelu, gelu_tanh, silu), else an empty tensor; both lists empty without save).
  m.def(
      "fused_mlp_fwd(Tensor x, Tensor[] weights, Tensor?[] biases, int[] activations, bool save) -> "
      "(Tensor, Tensor[], Tensor[])");
  // From fused_mlp_fwd's saved tensors: (grad_x, grad_weights, grad_biases), empty where not needed.
  m.def(
      "fused_mlp_bwd(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] hidden, Tensor out, Tensor[] preacts, "
      "int[] activations, bool need_x, bool need_w, bool need_b) -> (Tensor, Tensor[], Tensor[])");
  // Reconstruction loss of contiguous input against target (kind: 0 mse, 1 l1, 2 bce, 3 bce_logits;
  // reduction: 0 none, 1 mean, 2 sum, 3 batch = sum / batch). weight, when given, repeats over the
  // leading `batch` dim. Returns (loss, d loss / d input scaled by the reduction, or empty).
  m.def(
      "recon_loss_fwd(Tensor input, Tensor target, Tensor? weight, int kind, int reduction, int batch, "
      "bool need_grad) -> (Tensor, Tensor)");
  // -1/2 sum(1 + logvar - mu^2 - exp(logvar)) with the reductions above; returns (loss, d/dmu, d/dlogvar).
  m.def(
      "gaussian_kl_fwd(Tensor mu, Tensor logvar, int reduction, int batch, bool need_grad) -> "
      "(Tensor, Tensor, Tensor)");
  // Generalized divisive normalization of x [N, C, H, W] (NCHW or channels_last; float32, bfloat16,
  // float16) with float32 beta [C] and gamma [C, C]: y = x * rsqrt(beta + gamma @ x^2 per pixel), sqrt
  // when inverse; the second output is that rsqrt (sqrt) in x's layout when save, else empty.
  m.def("gdn_fwd(Tensor x, Tensor beta, Tensor gamma, bool inverse, bool save) -> (Tensor, Tensor)");
  // From grad, x and r (gdn_fwd's second output), all in one layout: (dx, dbeta, dgamma), dx empty
  // unless need_x, the float32 parameter gradients empty unless need_params.
  m.def(
      "gdn_bwd(Tensor grad, Tensor x, Tensor gamma, Tensor r, bool inverse, bool need_x, bool need_params) -> "
      "(Tensor, Tensor, Tensor)");
  // Integer convolution of the entropy networks (fastae/ops/int_conv.py): int16 x [N, Hp, Wp, Cin]
  // (zero-padded, channels last, Cin even) by int8 weight [T, Cin / 2, Cout rounded up to 16, 2]
  // (per tap, input channel pairs side by side) into int32, plus
  // bias, rescaled per channel: clamp((acc * mult[acc < 0] + 2^(shift-1)) >> shift, lo, hi) as
  // out_dtype (int16 or int32) [N, out_h, out_w, Cout]. taps [T, 2]: (dy, dx); phases [P, 4]:
  // (py, px, first tap, end tap); output (so*y + py, so*x + px) reads x[si*y + dy][si*x + dx];
  // outputs of no phase are 0. isa: -1 the best build for this CPU, or 0 baseline, 1 AVX2, 2 AVX-512.
  m.def(
      "int_conv(Tensor x, Tensor weight, Tensor bias, Tensor mult, Tensor shift, Tensor taps, Tensor phases, "
      "int si, int so, int out_h, int out_w, int lo, int hi, ScalarType out_dtype, int isa) -> Tensor");
  // The integer networks' rescaling alone, in one pass: int32 / int64 acc [..., C] ->
  // clamp((acc * mult[acc < 0] + 2^(shift-1)) >> shift, lo, hi) as out_dtype, in int64 arithmetic.
  m.def("int_requantize(Tensor acc, Tensor mult, Tensor shift, int lo, int hi, ScalarType out_dtype) -> Tensor");
  // clamp(a + b, -limit, limit) of int32 a and b of one shape, summed in int64: int32.
  m.def("int_add_clamp(Tensor a, Tensor b, int limit) -> Tensor");
  // The 3x3, stride-2, padding-1 convolution of one channel into C (weight [C, 1, 3, 3]): img
  // [B, 1, H, W] -> [B, C, (H-1)/2+1, (W-1)/2+1] channels-last; its transpose from C channels into one
  // (a ConvTranspose2d's weight [C, 1, 3, 3]): x [B, C, h, w] -> [B, 1, H, W] for an H x W that halves to
  // h x w; and the weight gradient of either, float32 [C, 1, 3, 3], with the per-channel sums of x
  // (fastae/ops/mono_conv.py).
  m.def("mono_conv_fwd(Tensor img, Tensor weight, Tensor? bias) -> Tensor");
  m.def("mono_conv_tfwd(Tensor x, Tensor weight, Tensor? bias, int H, int W) -> Tensor");
  m.def("mono_conv_wgrad(Tensor x, Tensor img) -> (Tensor, Tensor)");
}
