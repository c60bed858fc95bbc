// Operator schemas of nwot_fast, defined once. Backends register kernels in cpu/ and cuda/;
// fake (meta) kernels live in nwot_fast/ops.py.
#ifndef NWOT_NO_PYTHON
#include <Python.h>
#endif

#include <torch/library.h>

#include "nwot.h"

#ifndef NWOT_NO_PYTHON
// Importing nwot_fast._C only has to run the static registrations below, so the module is
// empty; it uses the limited API so that one wheel serves every CPython >= 3.9.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "nwot_fast compiled operators (registered as torch.ops.nwot_fast.*)",
      -1,    // size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(nwot_fast, m) {
  m.def("jacob_cov_score(Tensor J) -> Tensor");
  m.def("pack_codes(Tensor x) -> Tensor");
  m.def("hamming_kernel(Tensor codes, Tensor multiplicity, Tensor units) -> Tensor");
  m.def("logdet_score(Tensor K) -> Tensor");
  m.def("hook_logdet_score(Tensor codes, Tensor multiplicity, Tensor units) -> Tensor");
  // CPU only: ATen's NCHW avg_pool2d is the slow op of the fast path there; on CUDA the
  // Python wrapper (ops.avg_pool3x3) uses ATen's pooling.
  m.def("avg_pool3x3(Tensor x) -> Tensor");
  m.def("avg_pool3x3_backward(Tensor grad) -> Tensor");
  // CPU only: train-mode BatchNorm without affine (NB201's at initialisation) in the
  // channels-last or the NCHW layout (x's); y: one dense [N, C / parts, H, W] tensor per part in
  // that layout, invstd [C] float64. Elsewhere the Python wrapper (ops.batch_norm_train) uses ATen's.
  m.def("batch_norm_train(Tensor x, int parts) -> (Tensor[], Tensor)");
  m.def("batch_norm_train_backward(Tensor[] grad, Tensor[] y, Tensor invstd) -> Tensor");
  // The multi-arch engine's channel moves (nwot_fast/multi_arch/sparse.py), fused so that each
  // moves its channels once: a gather that applies the ReLU (a convolution group's input), and
  // a scatter / accumulate along the channels from an optional gathered source, optionally
  // masked by a ReLU output (the backward through that ReLU).
  m.def("relu_gather(Tensor x, Tensor? index) -> Tensor");
  m.def("scatter_channels_(Tensor(a!) dest, Tensor? dest_index, Tensor src, Tensor? src_index, Tensor? relu_out, "
        "bool accumulate) -> ()");
  // Backend-independent: what this binary was built with, for the loader's check.
  m.def("build_info() -> str", &nwot_fast::build_info);
}
