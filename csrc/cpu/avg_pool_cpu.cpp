// avg_pool3x3 on the CPU: NB201's avg_pool_3x3 (AvgPool2d(3, stride 1, padding 1,
// count_include_pad=False)) for contiguous NCHW float32 / float64 tensors, forward and backward, bitwise equal to
// ATen's kernels and several times faster.
//
// ATen's NCHW kernels visit one output at a time: the forward sums the window row by row
// (sum = 0; sum += x[ih][iw] for ih, then iw) and divides by the number of in-bounds taps; the
// backward scatters grad[oh][ow] / count into the window, outputs in row-major order. Both are
// therefore the same 3x3 box sum of the neighbours of a pixel, added in row-major order of the
// offsets, starting from 0 (backward: of grad / count). Here that box sum runs a whole row at a
// time (the order per pixel is unchanged, so the compiler may vectorise across pixels), one
// (n, c) plane per task.
//
// Channels-last input (dense NHWC, not also NCHW-contiguous) gets a channels-last output,
// bitwise equal to ATen's channels-last kernels, which add the same taps in the same order per
// channel: here one image per task, each tap added to a whole output row of W x C values.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../nwot.h"

namespace nwot_fast {
namespace {

// Taps of a 3-wide window at position i of an axis of length n (1 at a border, else 3; 1 when
// n == 1).
inline int64_t taps(int64_t i, int64_t n) { return std::min(i + 2, n) - std::max<int64_t>(i - 1, 0); }

// out[h][w] = sum over dh in {-1, 0, 1}, then dw in {-1, 0, 1} (in bounds) of in[h + dh][w + dw],
// accumulated from 0.0f in that order; then divided by the taps when divide is set.
template <typename scalar_t>
void box_sum_plane(const scalar_t* in, scalar_t* out, int64_t H, int64_t W, bool divide, scalar_t* acc) {
  for (int64_t h = 0; h < H; ++h) {
    std::fill(acc, acc + W, scalar_t(0));
    const int64_t h0 = std::max<int64_t>(h - 1, 0), h1 = std::min(h + 2, H);
    for (int64_t r = h0; r < h1; ++r) {
      const scalar_t* row = in + r * W;
      if (W == 1) {
        acc[0] += row[0];
        continue;
      }
      // w = 0: taps dw = 0, +1.
      acc[0] += row[0];
      acc[0] += row[1];
      // interior: dw = -1, 0, +1 in that order for every pixel.
      for (int64_t w = 1; w < W - 1; ++w) {
        scalar_t s = acc[w];
        s += row[w - 1];
        s += row[w];
        s += row[w + 1];
        acc[w] = s;
      }
      // w = W - 1: taps dw = -1, 0.
      acc[W - 1] += row[W - 2];
      acc[W - 1] += row[W - 1];
    }
    scalar_t* o = out + h * W;
    if (divide) {
      const int64_t th = h1 - h0;
      for (int64_t w = 0; w < W; ++w) o[w] = acc[w] / static_cast<scalar_t>(th * taps(w, W));
    } else {
      std::copy(acc, acc + W, o);
    }
  }
}

// Runs plane(in, out, H, W, acc, scratch) for every (n, c) plane of the contiguous float32 or
// float64 input, in parallel, into a new contiguous tensor of the same shape.
template <typename PlaneFn>
at::Tensor map_planes(const at::Tensor& in_, const char* name, PlaneFn plane) {
  TORCH_CHECK(in_.dim() == 4, name, " must be 4-D [batch, channels, height, width], got ", in_.dim(), "-D");
  TORCH_CHECK(in_.scalar_type() == at::kFloat || in_.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", in_.scalar_type());
  TORCH_CHECK(in_.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", in_.device());
  const at::Tensor in = in_.contiguous();
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  if (in.numel() == 0) return out;
  const int64_t planes = in.size(0) * in.size(1), H = in.size(2), W = in.size(3);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "avg_pool3x3_cpu", [&] {
    const scalar_t* ip = in.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> acc(W), scratch;
      for (int64_t p = begin; p < end; ++p) plane(ip + p * H * W, op + p * H * W, H, W, acc.data(), scratch);
    });
  });
  return out;
}

// Channels-last: out[h][w][c] = taps of in[h + dh][w + dw][c] for dh, then dw (in bounds),
// accumulated from 0 in that order, then divided by the taps when divide is set. One image.
template <typename scalar_t>
void box_sum_image_nhwc(const scalar_t* in, scalar_t* out, int64_t H, int64_t W, int64_t C, bool divide) {
  const int64_t row = W * C;
  for (int64_t h = 0; h < H; ++h) {
    scalar_t* o = out + h * row;
    std::fill(o, o + row, scalar_t(0));
    for (int64_t r = std::max<int64_t>(h - 1, 0); r < std::min(h + 2, H); ++r) {
      const scalar_t* i = in + r * row;
      // dw = -1: outputs w >= 1 read w - 1; dw = 0: all; dw = +1: outputs w <= W - 2 read w + 1.
      if (W > 1) {
        for (int64_t k = C; k < row; ++k) o[k] += i[k - C];
      }
      for (int64_t k = 0; k < row; ++k) o[k] += i[k];
      if (W > 1) {
        for (int64_t k = 0; k < row - C; ++k) o[k] += i[k + C];
      }
    }
    if (divide) {
      const int64_t th = taps(h, H);
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t d = static_cast<scalar_t>(th * taps(w, W));
        scalar_t* ow = o + w * C;
        for (int64_t c = 0; c < C; ++c) ow[c] /= d;
      }
    }
  }
}

bool is_nhwc(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// image(in, out, H, W, C, scratch) for every image of the dense channels-last input, in
// parallel, into a new channels-last tensor.
template <typename ImageFn>
at::Tensor map_images_nhwc(const at::Tensor& in, ImageFn image) {
  at::Tensor out = at::empty_like(in, at::MemoryFormat::ChannelsLast);
  if (in.numel() == 0) return out;
  const int64_t N = in.size(0), C = in.size(1), H = in.size(2), W = in.size(3);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "avg_pool3x3_cpu", [&] {
    const scalar_t* ip = in.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch;
      for (int64_t n = begin; n < end; ++n) image(ip + n * H * W * C, op + n * H * W * C, H, W, C, scratch);
    });
  });
  return out;
}

void check_pool_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D [batch, channels, height, width], got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

}  // namespace

at::Tensor avg_pool3x3_cpu(const at::Tensor& x) {
  check_pool_input(x, "x");
  if (is_nhwc(x)) {
    return map_images_nhwc(x, [](const auto* in, auto* out, int64_t H, int64_t W, int64_t C, auto&) {
      box_sum_image_nhwc(in, out, H, W, C, true);
    });
  }
  return map_planes(x, "x", [](const auto* in, auto* out, int64_t H, int64_t W, auto* acc, auto&) {
    box_sum_plane(in, out, H, W, true, acc);
  });
}

at::Tensor avg_pool3x3_backward_cpu(const at::Tensor& grad) {
  check_pool_input(grad, "grad");
  if (is_nhwc(grad)) {
    return map_images_nhwc(grad, [](const auto* g, auto* out, int64_t H, int64_t W, int64_t C, auto& scaled) {
      using scalar_t = std::remove_pointer_t<decltype(out)>;
      // Each output's share, grad / taps, as ATen computes it before scattering.
      scaled.resize(H * W * C);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t th = taps(h, H);
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t d = static_cast<scalar_t>(th * taps(w, W));
          const int64_t at = (h * W + w) * C;
          for (int64_t c = 0; c < C; ++c) scaled[at + c] = g[at + c] / d;
        }
      }
      box_sum_image_nhwc(scaled.data(), out, H, W, C, false);
    });
  }
  return map_planes(grad, "grad", [](const auto* g, auto* out, int64_t H, int64_t W, auto* acc, auto& scaled) {
    using scalar_t = std::remove_pointer_t<decltype(out)>;
    // Each output's share, grad / taps, as ATen computes it before scattering.
    scaled.resize(H * W);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t th = taps(h, H);
      for (int64_t w = 0; w < W; ++w) scaled[h * W + w] = g[h * W + w] / static_cast<scalar_t>(th * taps(w, W));
    }
    box_sum_plane(scaled.data(), out, H, W, false, acc);
  });
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("avg_pool3x3", &avg_pool3x3_cpu);
  m.impl("avg_pool3x3_backward", &avg_pool3x3_backward_cpu);
}

}  // namespace nwot_fast
