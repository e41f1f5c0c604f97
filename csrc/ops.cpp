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
}
