// avg_pool3x3 on the CPU: NB201's avg_pool_3x3 (AvgPool2d(3, stride 1, padding 1,
// count_include_pad=False)) for contiguous NCHW float32 / float64 tensors, forward and backward, bitwise equal to
// ATen's kernels and several times faster.
//
// ATen's NCHW kernels visit one output at a time: the forward sums the window row by row
// (sum = 0; sum += x[ih][iw] for ih, then iw) and divides by the number of in-bounds taps; the
// backward scatters grad[oh][ow] / count into the window, outputs in row-major order. Both are
// therefore the same 3x3 box sum of the neighbours of a pixel, added in row-major order of the
// offsets, starting from 0 (backward: of grad / count). Here each output's taps are summed in
// registers in that order and written once: one flat loop over a block of (n, c) planes for the
// 9-tap interior (vectorised across pixels), then each plane's border by its own rule.
//
// Channels-last input (dense NHWC, not also NCHW-contiguous) gets a channels-last output,
// bitwise equal to ATen's channels-last kernels, which add the same taps in the same order per
// channel: here one image per task, each output's taps summed in registers along a row of
// W x C values and written once.
//
// The loops (avg_pool_kernels.h) are built for the baseline, AVX2 and AVX-512 and chosen at run
// time (cpu_isa.h); every variant adds the same taps in the same order.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../nwot.h"

#define NWOT_VARIANT_HEADER "avg_pool_kernels.h"
#include "cpu_variants.h"

namespace nwot_fast {
namespace {

void check_pool_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D [batch, channels, height, width], got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

bool is_nhwc(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The forward (backward = false) or backward of the pooling: a dense channels-last input gets
// a channels-last output, any other is made contiguous first (NCHW output).
at::Tensor pool(const at::Tensor& t, const char* name, bool backward) {
  check_pool_input(t, name);
  const bool nhwc = is_nhwc(t);
  const at::Tensor in = nhwc ? t : t.contiguous();
  at::Tensor out = at::empty_like(in, nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (in.numel() == 0) return out;
  const int64_t N = in.size(0), C = in.size(1), H = in.size(2), W = in.size(3);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "avg_pool3x3_cpu", [&] {
    const scalar_t* ip = in.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (nhwc) {
      NWOT_CPU_DISPATCH(pool_images_nhwc<scalar_t>)(ip, op, N, H, W, C, backward);
    } else {
      NWOT_CPU_DISPATCH(pool_planes<scalar_t>)(ip, op, N * C, H, W, backward);
    }
  });
  return out;
}

}  // namespace

at::Tensor avg_pool3x3_cpu(const at::Tensor& x) { return pool(x, "x", false); }

at::Tensor avg_pool3x3_backward_cpu(const at::Tensor& grad) { return pool(grad, "grad", true); }

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("avg_pool3x3", &avg_pool3x3_cpu);
  m.impl("avg_pool3x3_backward", &avg_pool3x3_backward_cpu);
}

}  // namespace nwot_fast
