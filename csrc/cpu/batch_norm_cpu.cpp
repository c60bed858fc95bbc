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
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../nwot.h"

namespace nwot_fast {
namespace {

constexpr double kBnEps = 1e-5;

// Rows per statistics block: about 16k values, at least one row.
int64_t block_rows(int64_t channels) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(channels, 1)); }

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

// Calls f(width) with the width as a compile-time constant for NB201's channel counts (the
// loops along the channels are then unrolled into whole vectors; a run-time trip count of 16
// costs more in loop set-up than in arithmetic), else as an int64_t.
template <typename F>
void with_width(int64_t width, F f) {
  switch (width) {
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 48: return f(std::integral_constant<int64_t, 48>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    case 96: return f(std::integral_constant<int64_t, 96>{});
    case 128: return f(std::integral_constant<int64_t, 128>{});
    case 192: return f(std::integral_constant<int64_t, 192>{});
    default: return f(width);
  }
}

// Rows summed in scalar_t before a float64 add: short enough that the scalar_t sums keep
// float32 close to float64 (a few ulps), long enough that the float64 adds cost nothing.
constexpr int64_t kInnerRows = 32;

// Per-channel sums over the rows of a [rows, width] matrix: rowfn(r, acc) adds row r into a
// scalar_t accumulator; every kInnerRows rows it is added into float64, per block of rows, and
// the blocks are combined in block order.
template <typename scalar_t, typename RowFn>
std::vector<double> column_sums(int64_t rows, int64_t width, RowFn rowfn) {
  const int64_t per = block_rows(width);
  const int64_t blocks = (rows + per - 1) / per;
  std::vector<double> partial(blocks * width, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> inner(width);
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = partial.data() + b * width;
      const int64_t r1 = std::min(rows, (b + 1) * per);
      for (int64_t r = b * per; r < r1; r += kInnerRows) {
        std::fill(inner.begin(), inner.end(), scalar_t(0));
        const int64_t r2 = std::min(r1, r + kInnerRows);
        for (int64_t q = r; q < r2; ++q) rowfn(q, inner.data());
        for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<double>(inner[c]);
      }
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < width; ++c) total[c] += partial[b * width + c];
  return total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> batch_norm_train_cpu(const at::Tensor& x_in, int64_t parts) {
  check_bn_input(x_in, parts);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), PC = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t C = PC / parts, rows = N * H * W;
  at::Tensor y = empty_parts(x, parts);
  at::Tensor invstd = at::empty({PC}, x.options().dtype(at::kDouble));
  double* inv = invstd.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_train_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    std::vector<scalar_t> shift(PC), scale(PC);
    // Mean, then the biased variance about it (two passes: no cancellation).
    with_width(PC, [&](auto width) {
      std::vector<double> mean = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        const scalar_t* __restrict__ row = xp + r * PC;
        for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
      });
      for (int64_t c = 0; c < PC; ++c) shift[c] = static_cast<scalar_t>(mean[c] / static_cast<double>(rows));
      const scalar_t* __restrict__ sh = shift.data();
      std::vector<double> var = column_sums<scalar_t>(rows, PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        const scalar_t* __restrict__ row = xp + r * PC;
        for (int64_t c = 0; c < width; ++c) {
          const scalar_t d = row[c] - sh[c];
          acc[c] += d * d;
        }
      });
      for (int64_t c = 0; c < PC; ++c) {
        inv[c] = 1.0 / std::sqrt(var[c] / static_cast<double>(rows) + kBnEps);
        scale[c] = static_cast<scalar_t>(inv[c]);
      }
    });
    scalar_t* yp = y.data_ptr<scalar_t>();
    with_width(C, [&](auto width) {
      at::parallel_for(0, rows, block_rows(PC), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t p = 0; p < parts; ++p) {
            const scalar_t* __restrict__ s = shift.data() + p * C;
            const scalar_t* __restrict__ k = scale.data() + p * C;
            const scalar_t* __restrict__ row = xp + r * PC + p * C;
            scalar_t* __restrict__ o = yp + (p * rows + r) * C;
            for (int64_t c = 0; c < width; ++c) o[c] = (row[c] - s[c]) * k[c];
          }
        }
      });
    });
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
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* ypp = yd.const_data_ptr<scalar_t>();
    std::vector<scalar_t> mg(PC), mgy(PC), k(PC);
    scalar_t* out = gx.data_ptr<scalar_t>();
    with_width(C, [&](auto width) {
      // sum(g) and sum(g * y) per channel; each part is its own [rows, C] matrix, so the
      // columns are (part, channel) pairs summed over a row of every part.
      std::vector<double> sums = column_sums<scalar_t>(rows, 2 * PC, [&](int64_t r, scalar_t* __restrict__ acc) {
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t* __restrict__ gr = gp + (p * rows + r) * C;
          const scalar_t* __restrict__ yr = ypp + (p * rows + r) * C;
          scalar_t* __restrict__ a = acc + 2 * p * C;
          for (int64_t c = 0; c < width; ++c) {
            a[c] += gr[c];
            a[width + c] += gr[c] * yr[c];
          }
        }
      });
      // grad_x = invstd * (g - mean(g) - y * mean(g * y))
      for (int64_t p = 0; p < P; ++p) {
        for (int64_t c = 0; c < C; ++c) {
          mg[p * C + c] = static_cast<scalar_t>(sums[2 * p * C + c] / static_cast<double>(rows));
          mgy[p * C + c] = static_cast<scalar_t>(sums[2 * p * C + C + c] / static_cast<double>(rows));
          k[p * C + c] = static_cast<scalar_t>(inv[p * C + c]);
        }
      }
      at::parallel_for(0, rows, block_rows(PC), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t* __restrict__ a = mg.data() + p * C;
            const scalar_t* __restrict__ b = mgy.data() + p * C;
            const scalar_t* __restrict__ s = k.data() + p * C;
            const scalar_t* __restrict__ gr = gp + (p * rows + r) * C;
            const scalar_t* __restrict__ yr = ypp + (p * rows + r) * C;
            scalar_t* __restrict__ o = out + r * PC + p * C;
            for (int64_t c = 0; c < width; ++c) o[c] = (gr[c] - a[c] - yr[c] * b[c]) * s[c];
          }
        }
      });
    });
  });
  return gx;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_train_backward", &batch_norm_train_backward_cpu);
}

}  // namespace nwot_fast
