// sum_relu on the CPU: an NB201 node's sum of its incoming edges fused with the ReLU that the
// node's convolutions read, forward and backward (nwot.h).
//
// ATen spends k - 1 passes on the sum (each `+` reads two tensors and writes one) and one on
// the ReLU; backward, threshold_backward and the gradient accumulation take one pass each. Here
// the forward reads the k parts once and writes the node and its ReLU; the backward reads the
// two gradients and the ReLU once and writes the parts' gradient. Each value is rounded as
// ATen rounds it (the adds in order, one rounding each; relu_value / relu_grad_value), so the
// results are bitwise those of the ATen composition.
//
// Layouts: when every tensor is dense channels-last (the hook_logdet plans), one flat loop and
// channels-last outputs; otherwise every tensor is read as N rows of C*H*W values (a sample
// that is contiguous NCHW, at any batch stride: the per-edge channel slices of a merged
// convolution's BatchNorm are read in place), others are made contiguous first, and the
// outputs are contiguous NCHW. The loops (sum_relu_kernels.h) are built for the baseline,
// AVX2 and AVX-512 and chosen at run time (cpu_isa.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../nwot.h"

#define NWOT_VARIANT_HEADER "sum_relu_kernels.h"
#include "cpu_variants.h"

namespace nwot_fast {
namespace {

// Values per parallel task: large enough that a task's start-up is noise (ATen's grain).
constexpr int64_t kGrain = 32768;

bool is_nhwc(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The common layout of the tensors: a flat channels-last run (rows = 1) or N sample rows. The
// tensors not readable that way are replaced by contiguous copies; `stride` holds each one's
// row stride in elements.
struct Rows {
  std::vector<at::Tensor> tensors;
  std::vector<int64_t> stride;
  int64_t rows = 0, inner = 0;
  bool channels_last = false;
};

Rows as_rows(std::vector<at::Tensor> tensors) {
  Rows r;
  r.channels_last = true;
  for (const auto& t : tensors) r.channels_last = r.channels_last && is_nhwc(t);
  const at::Tensor& ref = tensors[0];
  if (r.channels_last) {
    r.rows = 1;
    r.inner = ref.numel();
  } else {
    r.rows = ref.size(0);
    r.inner = ref.size(0) ? ref.numel() / ref.size(0) : 0;
    for (auto& t : tensors) {
      // A sample that is contiguous NCHW (any batch stride) is read in place.
      if (t.numel() && !t[0].is_contiguous()) t = t.contiguous();
    }
  }
  for (const auto& t : tensors) r.stride.push_back(r.channels_last ? 0 : t.stride(0));
  r.tensors = std::move(tensors);
  return r;
}

at::Tensor new_output(const Rows& r) {
  return at::empty(r.tensors[0].sizes(), r.tensors[0].options().memory_format(
                                             r.channels_last ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous));
}

// Calls fn(row, begin, end) for the spans of [0, rows * inner) in parallel tasks.
template <typename Fn>
void for_spans(const Rows& r, const Fn& fn) {
  at::parallel_for(0, r.rows * r.inner, kGrain, [&](int64_t b, int64_t e) {
    while (b < e) {
      const int64_t row = b / r.inner, begin = b % r.inner;
      const int64_t end = std::min(r.inner, begin + (e - b));
      fn(row, begin, end);
      b += end - begin;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sum_relu_cpu(at::TensorList parts) {
  check_sum_relu_parts(parts);
  TORCH_CHECK(parts[0].device().is_cpu(), "parts must be CPU tensors for the CPU kernel, got ", parts[0].device());
  const Rows r = as_rows(parts.vec());
  at::Tensor node = new_output(r), relu = new_output(r);
  if (node.numel() == 0) return {node, relu};
  const int64_t k = static_cast<int64_t>(parts.size());
  AT_DISPATCH_FLOATING_TYPES(node.scalar_type(), "sum_relu_cpu", [&] {
    std::vector<const scalar_t*> base;
    for (const auto& t : r.tensors) base.push_back(t.const_data_ptr<scalar_t>());
    scalar_t* np = node.data_ptr<scalar_t>();
    scalar_t* rp = relu.data_ptr<scalar_t>();
    for_spans(r, [&](int64_t row, int64_t begin, int64_t end) {
      std::vector<const scalar_t*> p(k);
      for (int64_t j = 0; j < k; ++j) p[j] = base[j] + row * r.stride[j];
      NWOT_CPU_DISPATCH(sum_relu_span<scalar_t>)(p.data(), k, begin, end, np + row * r.inner, rp + row * r.inner);
    });
  });
  return {node, relu};
}

at::Tensor sum_relu_backward_cpu(const at::Tensor& grad_node, const at::Tensor& grad_relu, const at::Tensor& relu) {
  check_sum_relu_backward(grad_node, grad_relu, relu);
  TORCH_CHECK(relu.device().is_cpu(), "relu must be a CPU tensor for the CPU kernel, got ", relu.device());
  const Rows r = as_rows({grad_node, grad_relu, relu});
  at::Tensor out = new_output(r);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "sum_relu_backward_cpu", [&] {
    const scalar_t* g = r.tensors[0].const_data_ptr<scalar_t>();
    const scalar_t* gr = r.tensors[1].const_data_ptr<scalar_t>();
    const scalar_t* y = r.tensors[2].const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_spans(r, [&](int64_t row, int64_t begin, int64_t end) {
      NWOT_CPU_DISPATCH(sum_relu_backward_span<scalar_t>)(g + row * r.stride[0], gr + row * r.stride[1],
                                                          y + row * r.stride[2], begin, end, op + row * r.inner);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("sum_relu", &sum_relu_cpu);
  m.impl("sum_relu_backward", &sum_relu_backward_cpu);
}

}  // namespace nwot_fast
