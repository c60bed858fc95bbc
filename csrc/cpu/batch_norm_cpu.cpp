// batch_norm_train on the CPU: NB201's BatchNorm2d in train mode at initialisation (weight 1,
// bias 0, so no affine step), forward and input gradient, for float32 / float64 tensors in the
// channels-last layout, where a batch is a [rows = N*H*W, channels] matrix and every loop runs
// along the contiguous channels, and in the NCHW layout, where a channel is N contiguous runs of
// H*W values and the threads split the channels (jacob_cov's per-arch plans run NCHW on the CPU).
//
// ATen's channels-last BatchNorm backward is slow on the CPU and its NCHW kernels walk the
// tensor several times; here the forward reads x twice (statistics, then y) and writes y once,
// the backward reads (grad, y) twice and writes grad_x once. The output is one tensor per part
// (a merged convolution's channel group), each dense in the layout it runs in: the additions that consume
// the parts then see one memory format only, and the backward takes one gradient per part.
//
// Statistics are summed in short runs of rows in the input dtype, then in float64 per block of
// rows, and the blocks combined in block order: the result depends on the shape only, not on
// the thread count.
//
// The loops (batch_norm_kernels.h) are built for the baseline, AVX2 and AVX-512 and chosen at
// run time (cpu_isa.h); the variants give bitwise equal results.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../nwot.h"

#define NWOT_VARIANT_HEADER "batch_norm_kernels.h"
#include "cpu_variants.h"

namespace nwot_fast {
namespace {

constexpr double kBnEps = 1e-5;

void check_bn_input(const at::Tensor& x, int64_t parts) {
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [batch, channels, height, width], got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  TORCH_CHECK(parts >= 1, "parts must be >= 1, got ", parts);
  TORCH_CHECK(x.size(1) % parts == 0, "x channels (", x.size(1), ") must be divisible by parts (", parts, ")");
  TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) > 1,
              "x must have more than 1 value per channel for train-mode BatchNorm, got shape ", x.sizes());
}

// The layout the kernels run in, from the input's (the forward's x, the backward's y): channels-last
// for a dense channels-last tensor that is not also NCHW-contiguous (as avg_pool3x3 decides),
// NCHW otherwise; the outputs are dense in that layout and any other input is copied into it once.
bool reads_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor dense_in(const at::Tensor& t, at::MemoryFormat fmt) {
  return t.is_contiguous(fmt) ? t : t.contiguous(fmt);
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor> batch_norm_train_cpu(const at::Tensor& x_in, int64_t parts) {
  check_bn_input(x_in, parts);
  const bool nhwc = reads_channels_last(x_in);
  const at::MemoryFormat fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = dense_in(x_in, fmt);
  const int64_t N = x.size(0), PC = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t rows = N * H * W;
  // One tensor per part (a merged convolution's edge), each its own allocation: autograd then
  // hands back one gradient per part, which the backward reads where it is (no stack into one
  // [parts, ...] tensor, as an unbind of a single output would need).
  std::vector<at::Tensor> y;
  for (int64_t p = 0; p < parts; ++p) {
    y.push_back(at::empty({N, PC / parts, H, W}, x.options().memory_format(fmt)));
  }
  at::Tensor invstd = at::empty({PC}, x.options().dtype(at::kDouble));
  double* inv = invstd.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_cpu", [&] {
    std::vector<scalar_t*> y_parts;
    for (auto& t : y) y_parts.push_back(t.data_ptr<scalar_t>());
    if (nhwc) {
      NWOT_CPU_DISPATCH(batch_norm_forward<scalar_t>)(x.const_data_ptr<scalar_t>(), rows, PC, parts, kBnEps,
                                                      y_parts.data(), inv);
    } else {
      NWOT_CPU_DISPATCH(batch_norm_forward_nchw<scalar_t>)(x.const_data_ptr<scalar_t>(), N, PC, H * W, parts,
                                                           kBnEps, y_parts.data(), inv);
    }
  });
  return {y, invstd};
}

at::Tensor batch_norm_train_backward_cpu(at::TensorList grad, at::TensorList y, const at::Tensor& invstd) {
  TORCH_CHECK(!y.empty(), "y must hold at least one part, got none");
  TORCH_CHECK(grad.size() == y.size(), "grad must have one tensor per part of y (", y.size(), "), got ", grad.size());
  const at::Tensor& y0 = y[0];
  TORCH_CHECK(y0.dim() == 4, "y must be 4-D [batch, channels, height, width] parts, got ", y0.dim(), "-D");
  TORCH_CHECK(y0.scalar_type() == at::kFloat || y0.scalar_type() == at::kDouble,
              "y must be float32 or float64, got ", y0.scalar_type());
  TORCH_CHECK(y0.device().is_cpu(), "y must be a CPU tensor for the CPU kernel, got ", y0.device());
  for (size_t p = 0; p < y.size(); ++p) {
    TORCH_CHECK(y[p].sizes() == y0.sizes() && y[p].scalar_type() == y0.scalar_type() && y[p].device() == y0.device(),
                "y parts must have one shape, dtype and device: part 0 is ", y0.scalar_type(), " ", y0.sizes(),
                ", part ", p, " ", y[p].scalar_type(), " ", y[p].sizes());
    TORCH_CHECK(grad[p].sizes() == y0.sizes(), "grad must have the shape of y ", y0.sizes(), ", got ",
                grad[p].sizes(), " for part ", p);
    TORCH_CHECK(grad[p].scalar_type() == y0.scalar_type(), "grad must have the dtype of y (", y0.scalar_type(),
                "), got ", grad[p].scalar_type(), " for part ", p);
    TORCH_CHECK(grad[p].device() == y0.device(), "grad must be on the device of y (", y0.device(), "), got ",
                grad[p].device(), " for part ", p);
  }
  const int64_t P = static_cast<int64_t>(y.size()), N = y0.size(0), C = y0.size(1), H = y0.size(2), W = y0.size(3);
  const int64_t PC = P * C, rows = N * H * W;
  TORCH_CHECK(invstd.dim() == 1 && invstd.size(0) == PC && invstd.scalar_type() == at::kDouble,
              "invstd must be float64 [parts * channels] = [", PC, "], got ", invstd.scalar_type(), " ",
              invstd.sizes());
  // The kernel reads every part in the layout the forward wrote (autograd hands the gradients
  // in it when the consumers of the parts use that layout; anything else is copied once).
  const bool nhwc = reads_channels_last(y0);
  const at::MemoryFormat fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> g_dense, y_dense;
  for (int64_t p = 0; p < P; ++p) {
    g_dense.push_back(dense_in(grad[p], fmt));
    y_dense.push_back(dense_in(y[p], fmt));
  }
  at::Tensor gx = at::empty({N, PC, H, W}, y0.options().memory_format(fmt));
  if (rows == 0) return gx;
  const double* inv = invstd.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "batch_norm_train_backward_cpu", [&] {
    std::vector<const scalar_t*> g_parts, y_parts;
    for (int64_t p = 0; p < P; ++p) {
      g_parts.push_back(g_dense[p].const_data_ptr<scalar_t>());
      y_parts.push_back(y_dense[p].const_data_ptr<scalar_t>());
    }
    if (nhwc) {
      NWOT_CPU_DISPATCH(batch_norm_backward<scalar_t>)(g_parts.data(), y_parts.data(), inv, rows, P, C,
                                                       gx.data_ptr<scalar_t>());
    } else {
      NWOT_CPU_DISPATCH(batch_norm_backward_nchw<scalar_t>)(g_parts.data(), y_parts.data(), inv, N, H * W, P, C,
                                                            gx.data_ptr<scalar_t>());
    }
  });
  return gx;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_train_backward", &batch_norm_train_backward_cpu);
}

}  // namespace nwot_fast
