// pack_codes on CUDA: one warp per 64-bit word; two ballots give its two 32-bit halves, so
// the float activations are read once, coalesced, and only bits are written.
#include <torch/library.h>

#include "common.cuh"

namespace nwot_fast {
namespace {

template <typename scalar_t>
__global__ void pack_codes_kernel(const scalar_t* __restrict__ x, int64_t B, int64_t units, int64_t W,
                                  int64_t* __restrict__ codes) {
  const int lane = threadIdx.x & 31;
  const int64_t word = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (word >= B * W) return;  // whole warps exit together: word is uniform across a warp
  const int64_t b = word / W, w = word % W;
  const scalar_t* row = x + b * units;
  const int64_t lo = 64 * w + lane, hi = lo + 32;
  const bool bit_lo = lo < units && static_cast<double>(row[lo]) > 0.0;
  const bool bit_hi = hi < units && static_cast<double>(row[hi]) > 0.0;
  const unsigned low = __ballot_sync(0xffffffffu, bit_lo);
  const unsigned high = __ballot_sync(0xffffffffu, bit_hi);
  if (lane == 0) {
    codes[word] = static_cast<int64_t>((static_cast<uint64_t>(high) << 32) | static_cast<uint64_t>(low));
  }
}

}  // namespace

at::Tensor pack_codes_cuda(const at::Tensor& x_in) {
  check_activations(x_in);
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0);
  const int64_t units = B == 0 ? 0 : x.numel() / B;
  const int64_t W = (units + 63) / 64;
  at::Tensor codes = at::empty({B, W}, x.options().dtype(at::kLong));
  if (codes.numel() == 0) return codes;
  constexpr int threads = 256;
  const int64_t blocks = ceil_div(B * W * 32, threads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "pack_codes_cuda", [&] {
    pack_codes_kernel<scalar_t><<<blocks, threads, 0, stream>>>(x.const_data_ptr<scalar_t>(), B, units, W,
                                                                 codes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return codes;
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) { m.impl("pack_codes", &pack_codes_cuda); }

}  // namespace nwot_fast
