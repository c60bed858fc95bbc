// jacob_cov_score on CUDA. Per chunk of architectures: one block per row centres and
// normalises it into a float64 workspace (flagging zero-variance rows on the device), the
// Gram X X^T by cuBLAS (batched DGEMM), eigenvalues by cuSOLVER's batched symmetric solver,
// and one block per architecture sums the score and masks flagged architectures with NaN.
// Everything runs on the current stream; nothing is copied to the host.
#include <torch/library.h>

#include <cusolverDn.h>
#include <math_constants.h>

#include <sstream>
#include <vector>

#include "common.cuh"

#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11701 && !defined(NWOT_FORCE_SYEVJ)
#define NWOT_HAVE_SYEV_BATCHED 1
#else
#define NWOT_HAVE_SYEV_BATCHED 0
#endif

namespace nwot_fast {
namespace {

constexpr int kRowThreads = 256;
// Workspace cap for the float64 normalised rows of one chunk of architectures.
constexpr int64_t kChunkBytes = int64_t(512) << 20;

__device__ inline double block_sum(double v, double* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? shared[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const double total = shared[0];
  __syncthreads();
  return total;
}

// One block per row r of the chunk (arch = r / B): X[r] = (J[r] - mean) / ||J[r] - mean||;
// a zero-variance row (all entries equal) is written as zeros and flags its architecture.
template <typename scalar_t>
__global__ void normalise_rows_kernel(const scalar_t* __restrict__ J, int64_t B, int64_t D, double* __restrict__ X,
                                      int* __restrict__ degenerate) {
  __shared__ double shared[32];
  __shared__ int all_equal;
  const int64_t r = blockIdx.x;
  const scalar_t* row = J + r * D;
  double* out = X + r * D;
  if (threadIdx.x == 0) all_equal = 1;
  __syncthreads();
  const scalar_t first = row[0];
  double sum = 0.0;
  bool equal = true;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    const scalar_t v = row[k];
    equal = equal && (v == first);
    sum += static_cast<double>(v);
  }
  if (!equal) all_equal = 0;  // benign race: every writer writes 0
  const double mean = block_sum(sum, shared) / static_cast<double>(D);
  double squares = 0.0;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    const double c = static_cast<double>(row[k]) - mean;
    out[k] = c;
    squares += c * c;
  }
  const double total = block_sum(squares, shared);  // its barriers also publish all_equal
  const bool flat = all_equal != 0;
  const double inv_norm = flat ? 0.0 : 1.0 / sqrt(total);
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) out[k] *= inv_norm;
  if (flat && threadIdx.x == 0) degenerate[r / B] = 1;
}

__global__ void clip_kernel(double* __restrict__ G, int64_t count) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < count) G[k] = fmin(1.0, fmax(-1.0, G[k]));
}

// One block per architecture: S = -sum(log(l + eps) + 1 / (l + eps)); NaN if flagged
// (zero-variance row) or if the eigensolver reported failure for this matrix.
__global__ void score_kernel(const double* __restrict__ eig, const int* __restrict__ degenerate,
                             const int* __restrict__ info, int64_t B, double* __restrict__ scores) {
  __shared__ double shared[32];
  const int64_t a = blockIdx.x;
  double s = 0.0;
  for (int64_t k = threadIdx.x; k < B; k += blockDim.x) {
    const double v = eig[a * B + k] + kEigEps;
    s += log(v) + 1.0 / v;
  }
  const double total = block_sum(s, shared);
  if (threadIdx.x == 0) scores[a] = (degenerate[a] || info[a] != 0) ? CUDART_NAN : -total;
}

// Eigenvalues of `count` symmetric n x n float64 matrices (overwritten) into eig [count, n].
void batched_eigenvalues(at::Tensor& G, at::Tensor& eig, at::Tensor& info, int64_t count) {
  const int64_t n = G.size(1);
  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();  // bound to the current stream
  const auto byte_opts = G.options().dtype(at::kByte);
#if NWOT_HAVE_SYEV_BATCHED
  cusolverDnParams_t params = nullptr;
  NWOT_CUSOLVER_CHECK(cusolverDnCreateParams(&params));
  size_t device_bytes = 0, host_bytes = 0;
  cusolverStatus_t status = cusolverDnXsyevBatched_bufferSize(
      handle, params, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, G.data_ptr<double>(), n,
      CUDA_R_64F, eig.data_ptr<double>(), CUDA_R_64F, &device_bytes, &host_bytes, count);
  if (status == CUSOLVER_STATUS_SUCCESS) {
    at::Tensor device_ws = at::empty({static_cast<int64_t>(std::max<size_t>(device_bytes, 1))}, byte_opts);
    std::vector<char> host_ws(std::max<size_t>(host_bytes, 1));
    status = cusolverDnXsyevBatched(handle, params, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                    CUDA_R_64F, G.data_ptr<double>(), n, CUDA_R_64F, eig.data_ptr<double>(),
                                    CUDA_R_64F, device_ws.data_ptr(), device_bytes, host_ws.data(), host_bytes,
                                    info.data_ptr<int>(), count);
  }
  cusolverDnDestroyParams(params);
  NWOT_CUSOLVER_CHECK(status);
#else
  // Older cuSOLVER: syevjBatched handles n <= 32 (the score is a sum, so the eigenvalue
  // order does not matter and no sorting is needed); larger n loops syevd on the stream.
  if (n <= 32) {
    syevjInfo_t params = nullptr;
    NWOT_CUSOLVER_CHECK(cusolverDnCreateSyevjInfo(&params));
    int lwork = 0;
    cusolverStatus_t status = cusolverDnDsyevjBatched_bufferSize(
        handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, static_cast<int>(n), G.data_ptr<double>(),
        static_cast<int>(n), eig.data_ptr<double>(), &lwork, params, static_cast<int>(count));
    if (status == CUSOLVER_STATUS_SUCCESS) {
      at::Tensor work = at::empty({std::max<int64_t>(lwork, 1)}, G.options());
      status = cusolverDnDsyevjBatched(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                       static_cast<int>(n), G.data_ptr<double>(), static_cast<int>(n),
                                       eig.data_ptr<double>(), work.data_ptr<double>(), lwork, info.data_ptr<int>(),
                                       params, static_cast<int>(count));
    }
    cusolverDnDestroySyevjInfo(params);
    NWOT_CUSOLVER_CHECK(status);
  } else {
    int lwork = 0;
    NWOT_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                                    static_cast<int>(n), G.data_ptr<double>(), static_cast<int>(n),
                                                    eig.data_ptr<double>(), &lwork));
    at::Tensor work = at::empty({std::max<int64_t>(lwork, 1)}, G.options());
    for (int64_t a = 0; a < count; ++a) {
      NWOT_CUSOLVER_CHECK(cusolverDnDsyevd(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                           static_cast<int>(n), G.data_ptr<double>() + a * n * n,
                                           static_cast<int>(n), eig.data_ptr<double>() + a * n,
                                           work.data_ptr<double>(), lwork, info.data_ptr<int>() + a));
    }
  }
#endif
}

}  // namespace

at::Tensor jacob_cov_score_cuda(const at::Tensor& J_in) {
  check_jacobian(J_in);
  check_cuda(J_in, "J");
  const c10::cuda::CUDAGuard guard(J_in.device());
  const at::Tensor J = J_in.contiguous();
  const int64_t A = J.size(0), B = J.size(1), D = J.size(2);
  const auto opts = J.options();
  at::Tensor scores = at::empty({A}, opts.dtype(at::kDouble));
  if (A == 0) return scores;
  auto stream = at::cuda::getCurrentCUDAStream();

  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(A, kChunkBytes / (B * D * 8)));
  // Workspace, allocated once per call and reused by every chunk.
  at::Tensor X = at::empty({chunk, B, D}, opts.dtype(at::kDouble));
  at::Tensor G = at::empty({chunk, B, B}, opts.dtype(at::kDouble));
  at::Tensor eig = at::empty({chunk, B}, opts.dtype(at::kDouble));
  at::Tensor info = at::empty({chunk}, opts.dtype(at::kInt));
  at::Tensor degenerate = at::empty({A}, opts.dtype(at::kInt));
  degenerate.zero_();

  for (int64_t a0 = 0; a0 < A; a0 += chunk) {
    const int64_t count = std::min(chunk, A - a0);
    AT_DISPATCH_FLOATING_TYPES(J.scalar_type(), "jacob_cov_score_cuda", [&] {
      normalise_rows_kernel<scalar_t><<<static_cast<unsigned>(count * B), kRowThreads, 0, stream>>>(
          J.const_data_ptr<scalar_t>() + a0 * B * D, B, D, X.data_ptr<double>(), degenerate.data_ptr<int>() + a0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    at::Tensor Xc = X.narrow(0, 0, count);
    at::Tensor Gc = G.narrow(0, 0, count);
    at::bmm_out(Gc, Xc, Xc.transpose(1, 2));  // cuBLAS batched DGEMM on the current stream
    clip_kernel<<<static_cast<unsigned>(ceil_div(count * B * B, 256)), 256, 0, stream>>>(Gc.data_ptr<double>(),
                                                                                         count * B * B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    batched_eigenvalues(Gc, eig, info, count);
    score_kernel<<<static_cast<unsigned>(count), 128, 0, stream>>>(
        eig.const_data_ptr<double>(), degenerate.const_data_ptr<int>() + a0, info.const_data_ptr<int>(), B,
        scores.data_ptr<double>() + a0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return scores;
}

std::string cuda_build_info() {
  std::ostringstream s;
  s << "cuda=" << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10;
#ifdef CUSOLVER_VERSION
  s << ";cusolver=" << CUSOLVER_VERSION;
#endif
  s << ";eigensolver=" << (NWOT_HAVE_SYEV_BATCHED ? "cusolverDnXsyevBatched" : "syevjBatched/syevd");
  return s.str();
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) { m.impl("jacob_cov_score", &jacob_cov_score_cuda); }

}  // namespace nwot_fast
