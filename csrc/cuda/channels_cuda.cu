// The multi-arch engine's channel moves on CUDA: relu_gather and scatter_channels_ (nwot.h),
// the same element functions as the CPU kernels (relu_value, relu_grad_value), one thread per
// moved value (grid-stride), addressed through the tensors' strides. Each destination value is
// written by one thread only when dest_index holds distinct channels (the engine's indices do;
// the CPU kernel checks it, here a check would need a device -> host copy). Index values out
// of range stop the kernel with a device-side assert.
#include <torch/library.h>

#include <algorithm>

#include "common.cuh"

namespace nwot_fast {
namespace {

// Strides of a 4-D tensor, passed by value to the kernels.
struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename scalar_t>
__global__ void relu_gather_kernel(const scalar_t* __restrict__ x, Strides4 xs, int64_t channels,
                                   const int64_t* __restrict__ index, int64_t N, int64_t K, int64_t H, int64_t W,
                                   scalar_t* __restrict__ out) {
  const int64_t total = N * K * H * W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % W, h = (i / W) % H, k = (i / (W * H)) % K, n = i / (W * H * K);
    const int64_t c = index == nullptr ? k : index[k];
    CUDA_KERNEL_ASSERT(c >= 0 && c < channels);
    out[i] = relu_value(x[n * xs.n + c * xs.c + h * xs.h + w * xs.w]);  // out is contiguous
  }
}

template <typename scalar_t>
__global__ void scatter_channels_kernel(scalar_t* dest, Strides4 ds, int64_t dest_channels,
                                        const int64_t* __restrict__ dest_index, const scalar_t* src, Strides4 ss,
                                        int64_t src_channels, const int64_t* __restrict__ src_index,
                                        const scalar_t* __restrict__ mask, Strides4 ms, bool accumulate, int64_t N,
                                        int64_t K, int64_t H, int64_t W) {
  const int64_t total = N * K * H * W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % W, h = (i / W) % H, k = (i / (W * H)) % K, n = i / (W * H * K);
    const int64_t to = dest_index == nullptr ? k : dest_index[k];
    const int64_t from = src_index == nullptr ? k : src_index[k];
    CUDA_KERNEL_ASSERT(to >= 0 && to < dest_channels);
    CUDA_KERNEL_ASSERT(from >= 0 && from < src_channels);
    scalar_t v = src[n * ss.n + from * ss.c + h * ss.h + w * ss.w];
    if (mask != nullptr) v = relu_grad_value(v, mask[n * ms.n + k * ms.c + h * ms.h + w * ms.w]);
    scalar_t& out = dest[n * ds.n + to * ds.c + h * ds.h + w * ds.w];
    out = accumulate ? out + v : v;
  }
}

constexpr int kThreads = 256;

// Enough blocks for one value per thread, capped (the loops are grid-stride).
unsigned int blocks_for(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>(ceil_div(total, kThreads), int64_t(1) << 20));
}

const int64_t* index_ptr(const std::optional<at::Tensor>& index, at::Tensor& keep) {
  if (!index.has_value()) return nullptr;
  keep = index->contiguous();
  return keep.const_data_ptr<int64_t>();
}

}  // namespace

at::Tensor relu_gather_cuda(const at::Tensor& x, const std::optional<at::Tensor>& index) {
  check_channel_tensor(x, "x");
  check_cuda(x, "x");
  const int64_t K = check_channel_index(index, "index", x, x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, K, H, W}, x.options());
  if (out.numel() == 0) return out;
  at::Tensor index_keep;
  const int64_t* ip = index_ptr(index, index_keep);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_gather_cuda", [&] {
    relu_gather_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), strides_of(x), x.size(1), ip, N, K, H, W, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void scatter_channels_cuda(const at::Tensor& dest, const std::optional<at::Tensor>& dest_index, const at::Tensor& src,
                           const std::optional<at::Tensor>& src_index, const std::optional<at::Tensor>& relu_out,
                           bool accumulate) {
  const int64_t K = check_scatter_channels(dest, dest_index, src, src_index, relu_out);
  check_cuda(dest, "dest");
  const c10::cuda::CUDAGuard guard(dest.device());
  const int64_t N = dest.size(0), H = dest.size(2), W = dest.size(3);
  const int64_t total = N * K * H * W;
  if (total == 0) return;
  at::Tensor dest_keep, src_keep;
  const int64_t* dp = index_ptr(dest_index, dest_keep);
  const int64_t* sp = index_ptr(src_index, src_keep);
  const bool masked = relu_out.has_value();
  const Strides4 ms = masked ? strides_of(*relu_out) : Strides4{0, 0, 0, 0};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dest.scalar_type(), "scatter_channels_cuda", [&] {
    scatter_channels_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        dest.data_ptr<scalar_t>(), strides_of(dest), dest.size(1), dp, src.const_data_ptr<scalar_t>(),
        strides_of(src), src.size(1), sp, masked ? relu_out->const_data_ptr<scalar_t>() : nullptr, ms, accumulate,
        N, K, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) {
  m.impl("relu_gather", &relu_gather_cuda);
  m.impl("scatter_channels_", &scatter_channels_cuda);
}

}  // namespace nwot_fast
