// batch_norm_train on the CPU: NB201's BatchNorm2d in train mode at initialisation (weight 1,
// bias 0, so no affine step), forward and input gradient, for float32 / float64 tensors in the
// channels-last layout, where a batch is a [rows = N*H*W, channels] matrix and every loop runs
// along the contiguous channels.
//
// ATen's channels-last BatchNorm backward is slow on the CPU and its NCHW kernels walk the
// tensor several times; here the forward reads x twice (statistics, then y) and writes y once,
// the backward reads (grad, y) twice and writes grad_x once. The output is written per part
// (a merged convolution's channel group) so that every part is a dense channels-last tensor:
// the additions that consume the parts then see one memory format only.
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

// [parts, N, C / parts, H, W], every part a dense channels-last tensor.
at::Tensor empty_parts(const at::Tensor& like, int64_t parts) {
  const int64_t N = like.size(0), C = like.size(1) / parts, H = like.size(2), W = like.size(3);
  return at::empty_strided({parts, N, C, H, W}, {N * H * W * C, H * W * C, 1, W * C, C}, like.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> batch_norm_train_cpu(const at::Tensor& x_in, int64_t parts) {
  check_bn_input(x_in, parts);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), PC = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t rows = N * H * W;
  at::Tensor y = empty_parts(x, parts);
  at::Tensor invstd = at::empty({PC}, x.options().dtype(at::kDouble));
  double* inv = invstd.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_cpu", [&] {
    NWOT_CPU_DISPATCH(batch_norm_forward<scalar_t>)(x.const_data_ptr<scalar_t>(), rows, PC, parts, kBnEps,
                                                    y.data_ptr<scalar_t>(), inv);
  });
  return {y, invstd};
}

at::Tensor batch_norm_train_backward_cpu(const at::Tensor& grad_in, const at::Tensor& y, const at::Tensor& invstd) {
  TORCH_CHECK(y.dim() == 5, "y must be 5-D [parts, batch, channels, height, width], got ", y.dim(), "-D");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "y must be float32 or float64, got ", y.scalar_type());
  TORCH_CHECK(y.device().is_cpu(), "y must be a CPU tensor for the CPU kernel, got ", y.device());
  TORCH_CHECK(grad_in.sizes() == y.sizes(), "grad must have the shape of y ", y.sizes(), ", got ", grad_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == y.scalar_type(), "grad must have the dtype of y (", y.scalar_type(),
              "), got ", grad_in.scalar_type());
  TORCH_CHECK(grad_in.device() == y.device(), "grad must be on the device of y (", y.device(), "), got ",
              grad_in.device());
  const int64_t P = y.size(0), N = y.size(1), C = y.size(2), H = y.size(3), W = y.size(4);
  const int64_t PC = P * C, rows = N * H * W;
  TORCH_CHECK(invstd.dim() == 1 && invstd.size(0) == PC && invstd.scalar_type() == at::kDouble,
              "invstd must be float64 [parts * channels] = [", PC, "], got ", invstd.scalar_type(), " ",
              invstd.sizes());
  // The kernel reads both in the layout the forward wrote (autograd hands grad in it when the
  // consumers of the parts are channels-last; anything else is copied once).
  const std::vector<int64_t> want = {rows * C, H * W * C, 1, W * C, C};
  auto dense = [&](const at::Tensor& t) {
    if (t.strides() == at::IntArrayRef(want)) return t;
    at::Tensor d = at::empty_strided(t.sizes(), want, t.options());
    d.copy_(t);
    return d;
  };
  const at::Tensor g = dense(grad_in);
  const at::Tensor yd = dense(y);
  at::Tensor gx = at::empty({N, PC, H, W}, y.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (rows == 0) return gx;
  const double* inv = invstd.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "batch_norm_train_backward_cpu", [&] {
    NWOT_CPU_DISPATCH(batch_norm_backward<scalar_t>)(g.const_data_ptr<scalar_t>(), yd.const_data_ptr<scalar_t>(), inv,
                                                     rows, P, C, gx.data_ptr<scalar_t>());
  });
  return gx;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_train_backward", &batch_norm_train_backward_cpu);
}

}  // namespace nwot_fast
