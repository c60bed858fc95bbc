// sum_relu and sum_relu_backward on CUDA (nwot.h): one thread per value (grid-stride) over
// contiguous copies of the inputs (channels-last when every input is dense channels-last, as
// the CPU kernel decides), the same element functions as the CPU kernels (relu_value,
// relu_grad_value) and the node sum in ATen's order, one rounding per add.
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.cuh"

namespace nwot_fast {
namespace {

constexpr int kThreads = 256;
// Parts summed per launch; more parts continue from the node written by the previous launch
// (the running sum is rounded to scalar_t after every add anyway, so the values are the same).
constexpr int kPartsPerLaunch = 4;

template <typename scalar_t>
struct PartPointers {
  const scalar_t* p[kPartsPerLaunch];
  int k;
};

template <typename scalar_t>
__global__ void sum_relu_kernel(PartPointers<scalar_t> parts, int64_t total, scalar_t* node, scalar_t* relu) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    scalar_t s = parts.p[0][i];
    for (int j = 1; j < parts.k; ++j) s = s + parts.p[j][i];
    node[i] = s;
    relu[i] = relu_value(s);
  }
}

template <typename scalar_t>
__global__ void sum_relu_backward_kernel(const scalar_t* __restrict__ grad_node, const scalar_t* __restrict__ grad_relu,
                                         const scalar_t* __restrict__ relu, int64_t total, scalar_t* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = grad_node[i] + relu_grad_value(grad_relu[i], relu[i]);
  }
}

unsigned int blocks_for(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>(ceil_div(total, kThreads), int64_t(1) << 20));
}

// Channels-last when every tensor is dense channels-last, else contiguous NCHW.
at::MemoryFormat common_format(at::TensorList tensors) {
  for (const auto& t : tensors) {
    if (t.is_contiguous() || !t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::Contiguous;
  }
  return at::MemoryFormat::ChannelsLast;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sum_relu_cuda(at::TensorList parts) {
  check_sum_relu_parts(parts);
  check_cuda(parts[0], "parts[0]");
  const c10::cuda::CUDAGuard guard(parts[0].device());
  const at::MemoryFormat format = common_format(parts);
  std::vector<at::Tensor> dense;
  for (const auto& t : parts) dense.push_back(t.contiguous(format));
  at::Tensor node = at::empty(parts[0].sizes(), parts[0].options().memory_format(format));
  at::Tensor relu = at::empty(parts[0].sizes(), parts[0].options().memory_format(format));
  const int64_t total = node.numel();
  if (total == 0) return {node, relu};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(node.scalar_type(), "sum_relu_cuda", [&] {
    size_t next = 0;
    while (next < dense.size()) {
      PartPointers<scalar_t> pp{};
      pp.k = 0;
      if (next > 0) pp.p[pp.k++] = node.const_data_ptr<scalar_t>();  // the sum so far
      while (pp.k < kPartsPerLaunch && next < dense.size()) pp.p[pp.k++] = dense[next++].const_data_ptr<scalar_t>();
      sum_relu_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(pp, total, node.data_ptr<scalar_t>(),
                                                                            relu.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {node, relu};
}

at::Tensor sum_relu_backward_cuda(const at::Tensor& grad_node, const at::Tensor& grad_relu, const at::Tensor& relu) {
  check_sum_relu_backward(grad_node, grad_relu, relu);
  check_cuda(relu, "relu");
  const c10::cuda::CUDAGuard guard(relu.device());
  const at::MemoryFormat format = common_format({grad_node, grad_relu, relu});
  const at::Tensor g = grad_node.contiguous(format), gr = grad_relu.contiguous(format), y = relu.contiguous(format);
  at::Tensor out = at::empty(relu.sizes(), relu.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "sum_relu_backward_cuda", [&] {
    sum_relu_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), gr.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), total,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) {
  m.impl("sum_relu", &sum_relu_cuda);
  m.impl("sum_relu_backward", &sum_relu_backward_cuda);
}

}  // namespace nwot_fast
