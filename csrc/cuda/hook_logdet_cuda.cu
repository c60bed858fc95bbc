// hook_logdet on CUDA: K by popcount in shared-memory tiles (exact integers), log|det K| by
// cuBLAS batched LU (getrfBatched) in float64, separately or fused in one call.
#include <torch/library.h>

#include <math_constants.h>

#include "common.cuh"

namespace nwot_fast {
namespace {

constexpr int kTile = 16;       // K tile: kTile x kTile threads, one K entry each
constexpr int kTileWords = 32;  // code words staged in shared memory per step

// K[a, i, j] = units[a] - sum_w mult[a, w] * popcount(codes[a, i, w] ^ codes[a, j, w]).
template <typename out_t>
__global__ void agreement_kernel(const int64_t* __restrict__ codes, const int64_t* __restrict__ mult,
                                 const int64_t* __restrict__ units, int64_t B, int64_t W, out_t* __restrict__ K) {
  __shared__ unsigned long long rows_i[kTile][kTileWords + 1];
  __shared__ unsigned long long rows_j[kTile][kTileWords + 1];
  __shared__ long long weights[kTileWords];
  const int64_t a = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kTile + ty;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  const int64_t* base = codes + a * B * W;
  const int tid = ty * kTile + tx;
  long long disagree = 0;
  for (int64_t w0 = 0; w0 < W; w0 += kTileWords) {
    // Stage kTile rows x kTileWords words of the i block and of the j block.
    for (int e = tid; e < kTile * kTileWords; e += kTile * kTile) {
      const int r = e / kTileWords, c = e % kTileWords;
      const int64_t w = w0 + c;
      const int64_t ri = static_cast<int64_t>(blockIdx.y) * kTile + r;
      const int64_t rj = static_cast<int64_t>(blockIdx.x) * kTile + r;
      rows_i[r][c] = (ri < B && w < W) ? static_cast<unsigned long long>(base[ri * W + w]) : 0ull;
      rows_j[r][c] = (rj < B && w < W) ? static_cast<unsigned long long>(base[rj * W + w]) : 0ull;
    }
    if (tid < kTileWords) weights[tid] = (w0 + tid < W) ? mult[a * W + w0 + tid] : 0;
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTileWords; ++c) disagree += weights[c] * __popcll(rows_i[ty][c] ^ rows_j[tx][c]);
    __syncthreads();
  }
  if (i < B && j < B) K[(a * B + i) * B + j] = static_cast<out_t>(units[a] - disagree);
}

__global__ void matrix_pointers_kernel(double* base, int64_t stride, int64_t count, double** ptrs) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a < count) ptrs[a] = base + a * stride;
}

// S[a] = sum log|U_kk|; -inf when getrf met an exactly zero pivot (info > 0).
__global__ void logdet_from_lu_kernel(const double* __restrict__ lu, const int* __restrict__ info, int64_t A,
                                      int64_t n, double* __restrict__ scores) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= A) return;
  if (info[a] > 0) {
    scores[a] = -CUDART_INF;
    return;
  }
  const double* m = lu + a * n * n;
  double s = 0.0;
  for (int64_t k = 0; k < n; ++k) s += log(fabs(m[k * n + k]));
  scores[a] = s;
}

void launch_agreement(const at::Tensor& codes, const at::Tensor& mult, const at::Tensor& units, at::Tensor& K) {
  const int64_t A = codes.size(0), B = codes.size(1), W = codes.size(2);
  TORCH_CHECK(A <= 65535, "codes: at most 65535 architectures per call on CUDA, got ", A);
  const dim3 threads(kTile, kTile);
  const dim3 blocks(static_cast<unsigned>(ceil_div(B, kTile)), static_cast<unsigned>(ceil_div(B, kTile)),
                    static_cast<unsigned>(A));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (K.scalar_type() == at::kLong) {
    agreement_kernel<int64_t><<<blocks, threads, 0, stream>>>(codes.const_data_ptr<int64_t>(),
                                                              mult.const_data_ptr<int64_t>(),
                                                              units.const_data_ptr<int64_t>(), B, W,
                                                              K.data_ptr<int64_t>());
  } else {
    agreement_kernel<double><<<blocks, threads, 0, stream>>>(codes.const_data_ptr<int64_t>(),
                                                             mult.const_data_ptr<int64_t>(),
                                                             units.const_data_ptr<int64_t>(), B, W,
                                                             K.data_ptr<double>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Scores of the float64 matrices in lu [A, n, n] (overwritten). K is symmetric here or, for
// a general K, LU of the column-major view K^T has the same |det|.
void logdet_in_place(at::Tensor& lu, at::Tensor& scores) {
  const int64_t A = lu.size(0), n = lu.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (n == 0) {
    scores.zero_();
    return;
  }
  TORCH_CHECK(n <= std::numeric_limits<int>::max() && A <= std::numeric_limits<int>::max(),
              "K is too large for cuBLAS getrfBatched: ", lu.sizes());
  const auto opts = lu.options();
  at::Tensor ptrs = at::empty({A}, opts.dtype(at::kLong));
  at::Tensor pivots = at::empty({A, n}, opts.dtype(at::kInt));
  at::Tensor info = at::empty({A}, opts.dtype(at::kInt));
  double** ptr_array = reinterpret_cast<double**>(ptrs.data_ptr<int64_t>());
  matrix_pointers_kernel<<<static_cast<unsigned>(ceil_div(A, 256)), 256, 0, stream>>>(lu.data_ptr<double>(), n * n,
                                                                                       A, ptr_array);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  NWOT_CUBLAS_CHECK(cublasDgetrfBatched(handle, static_cast<int>(n), ptr_array, static_cast<int>(n),
                                        pivots.data_ptr<int>(), info.data_ptr<int>(), static_cast<int>(A)));
  logdet_from_lu_kernel<<<static_cast<unsigned>(ceil_div(A, 256)), 256, 0, stream>>>(
      lu.const_data_ptr<double>(), info.const_data_ptr<int>(), A, n, scores.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_codes_cuda(const at::Tensor& codes, const at::Tensor& mult, const at::Tensor& units) {
  check_codes(codes, mult, units);
  check_cuda(codes, "codes");
}

}  // namespace

at::Tensor hamming_kernel_cuda(const at::Tensor& codes_in, const at::Tensor& mult_in, const at::Tensor& units_in) {
  check_codes_cuda(codes_in, mult_in, units_in);
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), mult = mult_in.contiguous(), units = units_in.contiguous();
  const int64_t A = codes.size(0), B = codes.size(1);
  at::Tensor K = at::empty({A, B, B}, codes.options());
  if (K.numel() == 0) return K;
  launch_agreement(codes, mult, units, K);
  return K;
}

at::Tensor logdet_score_cuda(const at::Tensor& K) {
  check_kernel_matrix(K);
  check_cuda(K, "K");
  const c10::cuda::CUDAGuard guard(K.device());
  at::Tensor scores = at::empty({K.size(0)}, K.options().dtype(at::kDouble));
  if (K.size(0) == 0) return scores;
  // The one workspace: a float64 copy that getrf factors in place.
  at::Tensor lu = at::empty(K.sizes(), K.options().dtype(at::kDouble));
  lu.copy_(K);
  logdet_in_place(lu, scores);
  return scores;
}

at::Tensor hook_logdet_score_cuda(const at::Tensor& codes_in, const at::Tensor& mult_in, const at::Tensor& units_in) {
  check_codes_cuda(codes_in, mult_in, units_in);
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), mult = mult_in.contiguous(), units = units_in.contiguous();
  const int64_t A = codes.size(0), B = codes.size(1);
  at::Tensor scores = at::empty({A}, codes.options().dtype(at::kDouble));
  if (A == 0) return scores;
  // K goes straight into the float64 LU workspace (exact: entries are integers < 2^53).
  at::Tensor lu = at::empty({A, B, B}, codes.options().dtype(at::kDouble));
  if (B > 0) launch_agreement(codes, mult, units, lu);
  logdet_in_place(lu, scores);
  return scores;
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) {
  m.impl("hamming_kernel", &hamming_kernel_cuda);
  m.impl("logdet_score", &logdet_score_cuda);
  m.impl("hook_logdet_score", &hook_logdet_score_cuda);
}

}  // namespace nwot_fast
