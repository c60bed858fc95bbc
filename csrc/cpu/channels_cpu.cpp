// The multi-arch engine's channel moves on the CPU: relu_gather and scatter_channels_ (nwot.h).
//
// ATen spends two passes on each (index_select then relu_; threshold_backward then
// index_copy_ / index_add_); these read and write every moved value once. Each output value is
// the one ATen's pair computes (the same comparison, the same single addition), so the results
// are bitwise those of the composition. Planes are visited through the tensors' strides, so
// channel slices of a larger buffer (a node's gradient inside its cell's buffer, a narrowed
// group output) are read and written in place.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../nwot.h"

namespace nwot_fast {
namespace {

// The channel of each of the K moved channels: index[k], or k when there is no index; the
// values are checked against the channels of the tensor they index.
std::vector<int64_t> channel_map(const std::optional<at::Tensor>& index, int64_t K, int64_t channels,
                                 const char* name) {
  std::vector<int64_t> map(K);
  if (!index.has_value()) {
    for (int64_t k = 0; k < K; ++k) map[k] = k;
    return map;
  }
  const at::Tensor i = index->contiguous();
  const int64_t* p = i.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(p[k] >= 0 && p[k] < channels, name, " values must be in [0, ", channels, "), got ", p[k],
                " at position ", k);
    map[k] = p[k];
  }
  return map;
}

// One row of W values (strides in elements), the mask and the accumulation decided at compile
// time so that the dense case (unit strides) vectorises. Rows of dest never overlap the rows
// read (the operator's contract), hence __restrict__.
template <typename scalar_t, bool masked, bool accumulate>
void scatter_row(scalar_t* __restrict__ d, int64_t dw, const scalar_t* __restrict__ s, int64_t sw,
                 const scalar_t* __restrict__ m, int64_t mw, int64_t W) {
  if (dw == 1 && sw == 1 && (!masked || mw == 1)) {
    for (int64_t w = 0; w < W; ++w) {
      scalar_t v = s[w];
      if constexpr (masked) v = relu_grad_value(v, m[w]);
      if constexpr (accumulate) {
        d[w] = d[w] + v;
      } else {
        d[w] = v;
      }
    }
    return;
  }
  for (int64_t w = 0; w < W; ++w) {
    scalar_t v = s[w * sw];
    if constexpr (masked) v = relu_grad_value(v, m[w * mw]);
    if constexpr (accumulate) {
      d[w * dw] = d[w * dw] + v;
    } else {
      d[w * dw] = v;
    }
  }
}

template <typename scalar_t>
using ScatterRow = void (*)(scalar_t*, int64_t, const scalar_t*, int64_t, const scalar_t*, int64_t, int64_t);

template <typename scalar_t>
ScatterRow<scalar_t> pick_scatter_row(bool masked, bool accumulate) {
  if (masked) return accumulate ? &scatter_row<scalar_t, true, true> : &scatter_row<scalar_t, true, false>;
  return accumulate ? &scatter_row<scalar_t, false, true> : &scatter_row<scalar_t, false, false>;
}

}  // namespace

at::Tensor relu_gather_cpu(const at::Tensor& x, const std::optional<at::Tensor>& index) {
  check_channel_tensor(x, "x");
  TORCH_CHECK(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  const int64_t K = check_channel_index(index, "index", x, x.size(1));
  const std::vector<int64_t> map = channel_map(index, K, x.size(1), "index");
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, K, H, W}, x.options());
  if (out.numel() == 0) return out;
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_gather_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // One (sample, channel) plane per task; out is contiguous.
    at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / K, k = p % K;
        const scalar_t* in = xp + n * sn + map[k] * sc;
        scalar_t* o = op + p * H * W;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* __restrict__ r = in + h * sh;
          scalar_t* __restrict__ orow = o + h * W;
          if (sw == 1) {
            for (int64_t w = 0; w < W; ++w) orow[w] = relu_value(r[w]);
          } else {
            for (int64_t w = 0; w < W; ++w) orow[w] = relu_value(r[w * sw]);
          }
        }
      }
    });
  });
  return out;
}

void scatter_channels_cpu(const at::Tensor& dest, const std::optional<at::Tensor>& dest_index, const at::Tensor& src,
                          const std::optional<at::Tensor>& src_index, const std::optional<at::Tensor>& relu_out,
                          bool accumulate) {
  const int64_t K = check_scatter_channels(dest, dest_index, src, src_index, relu_out);
  TORCH_CHECK(dest.device().is_cpu(), "dest must be a CPU tensor for the CPU kernel, got ", dest.device());
  const std::vector<int64_t> to = channel_map(dest_index, K, dest.size(1), "dest_index");
  const std::vector<int64_t> from = channel_map(src_index, K, src.size(1), "src_index");
  {
    // Distinct destinations: otherwise the result would depend on the order of the writes.
    std::vector<char> seen(dest.size(1), 0);
    for (int64_t k = 0; k < K; ++k) {
      TORCH_CHECK(!seen[to[k]], "dest_index values must be distinct, got ", to[k], " twice");
      seen[to[k]] = 1;
    }
  }
  const int64_t N = dest.size(0), H = dest.size(2), W = dest.size(3);
  if (N * K * H * W == 0) return;
  const bool masked = relu_out.has_value();
  const at::Tensor mask = masked ? *relu_out : at::Tensor();
  const int64_t dn = dest.stride(0), dc = dest.stride(1), dh = dest.stride(2), dw = dest.stride(3);
  const int64_t sn = src.stride(0), sc = src.stride(1), sh = src.stride(2), sw = src.stride(3);
  const int64_t mn = masked ? mask.stride(0) : 0, mc = masked ? mask.stride(1) : 0;
  const int64_t mh = masked ? mask.stride(2) : 0, mw = masked ? mask.stride(3) : 0;
  AT_DISPATCH_FLOATING_TYPES(dest.scalar_type(), "scatter_channels_cpu", [&] {
    scalar_t* dp = dest.data_ptr<scalar_t>();
    const scalar_t* sp = src.const_data_ptr<scalar_t>();
    const scalar_t* mp = masked ? mask.const_data_ptr<scalar_t>() : nullptr;
    const ScatterRow<scalar_t> row = pick_scatter_row<scalar_t>(masked, accumulate);
    // One (sample, channel) plane per task: destinations are distinct, so tasks never overlap.
    at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / K, k = p % K;
        scalar_t* d = dp + n * dn + to[k] * dc;
        const scalar_t* s = sp + n * sn + from[k] * sc;
        const scalar_t* m = masked ? mp + n * mn + k * mc : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          row(d + h * dh, dw, s + h * sh, sw, masked ? m + h * mh : nullptr, mw, W);
        }
      }
    });
  });
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("relu_gather", &relu_gather_cpu);
  m.impl("scatter_channels_", &scatter_channels_cpu);
}

}  // namespace nwot_fast
