// jacob_cov_score on CUDA. Per chunk of architectures: one block per row centres and
// normalises it into a float64 workspace (flagging zero-variance rows on the device), the
// Gram X X^T by cuBLAS (batched DGEMM), eigenvalues by cuSOLVER's batched symmetric solver,
// and one block per architecture sums the score and masks flagged architectures with NaN.
// Everything runs on the current stream; nothing is copied to the host.
#include <ATen/cuda/Exceptions.h>
#include <torch/library.h>

#include <cusolverDn.h>
#include <math_constants.h>

#include <cstdlib>
#include <cstring>
#include <memory>
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
// Workspace cap for one chunk of architectures (X, G, eigenvalues, solver workspace), also
// at most half the free device memory.
constexpr int64_t kChunkBytes = int64_t(1) << 30;
// cusolverDnXsyevBatched / syevjBatched: at most 65535 matrices per call, and the matrices of
// one call must satisfy n * lda * batch <= INT32_MAX.
constexpr int64_t kMaxSolverBatch = 65535;
constexpr int64_t kMaxSolverElements = 2147483647;

// NWOT_FORCE_SYEVJ=1 in the environment (read per call) selects the older eigensolver path
// (syevjBatched for n <= 32, else syevd per matrix) even where syevBatched exists, so that a
// GPU test can exercise it.
bool force_syevj() {
  const char* v = std::getenv("NWOT_FORCE_SYEVJ");
  return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

// cuSOLVER handles owned by RAII: freed if anything in between throws; release() destroys
// with a checked status on the normal path.
template <typename Handle, cusolverStatus_t (*Destroy)(Handle)>
class SolverObject {
 public:
  explicit SolverObject(cusolverStatus_t (*create)(Handle*)) { TORCH_CUSOLVER_CHECK(create(&handle_)); }
  ~SolverObject() {
    if (handle_ != nullptr) Destroy(handle_);  // unwinding: the first error is the one reported
  }
  SolverObject(const SolverObject&) = delete;
  SolverObject& operator=(const SolverObject&) = delete;
  Handle get() const { return handle_; }
  void release() {
    Handle h = handle_;
    handle_ = nullptr;
    TORCH_CUSOLVER_CHECK(Destroy(h));
  }

 private:
  Handle handle_ = nullptr;
};

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
// a zero-variance row (all entries equal) or a row with a NaN or infinite entry is written as
// zeros and flags its architecture (score NaN, as on the CPU).
template <typename scalar_t>
__global__ void normalise_rows_kernel(const scalar_t* __restrict__ J, int64_t B, int64_t D, double* __restrict__ X,
                                      int* __restrict__ degenerate) {
  __shared__ double shared[32];
  __shared__ int all_equal, non_finite;
  const int64_t r = blockIdx.x;
  const scalar_t* row = J + r * D;
  double* out = X + r * D;
  if (threadIdx.x == 0) {
    all_equal = 1;
    non_finite = 0;
  }
  __syncthreads();
  const scalar_t first = row[0];
  double sum = 0.0;
  bool equal = true, finite = true;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    const scalar_t v = row[k];
    equal = equal && (v == first);
    finite = finite && isfinite(static_cast<double>(v));
    sum += static_cast<double>(v);
  }
  if (!equal) all_equal = 0;  // benign races: every writer writes the same value
  if (!finite) non_finite = 1;

  const double mean = block_sum(sum, shared) / static_cast<double>(D);
  double squares = 0.0;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    const double c = static_cast<double>(row[k]) - mean;
    out[k] = c;
    squares += c * c;
  }
  const double total = block_sum(squares, shared);  // its barriers also publish the flags
  const bool flat = all_equal != 0 || non_finite != 0;
  const double inv_norm = flat ? 0.0 : 1.0 / sqrt(total);
  // Zeros, not NaN, for a flagged row: its G stays finite for the eigensolver.
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) out[k] = flat ? 0.0 : out[k] * inv_norm;
  if (flat && threadIdx.x == 0) degenerate[r / B] = 1;
}

__global__ void clip_kernel(double* __restrict__ G, int64_t count) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < count) G[k] = fmin(1.0, fmax(-1.0, G[k]));
}

// One block per architecture: S = -sum(log(l + eps) + 1 / (l + eps)); NaN if flagged
// (zero-variance or non-finite row) or if the eigensolver reported failure for this matrix
// (the rule on the CPU as well: NaN for that architecture, the others unaffected).
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

// Eigenvalues of `count` symmetric n x n float64 matrices G [>= count, n, n] (overwritten)
// into eig [>= count, n], per-matrix status into info; count within the solver's limits.
void batched_eigenvalues(at::Tensor& G, at::Tensor& eig, at::Tensor& info, int64_t count) {
  const int64_t n = G.size(1);
  cusolverDnHandle_t handle = at::cuda::getCurrentCUDASolverDnHandle();  // bound to the current stream
#if NWOT_HAVE_SYEV_BATCHED
  if (!force_syevj()) {
    SolverObject<cusolverDnParams_t, cusolverDnDestroyParams> params(cusolverDnCreateParams);
    size_t device_bytes = 0, host_bytes = 0;
    TORCH_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
        handle, params.get(), CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, G.data_ptr<double>(),
        n, CUDA_R_64F, eig.data_ptr<double>(), CUDA_R_64F, &device_bytes, &host_bytes, count));
    at::Tensor device_ws =
        at::empty({static_cast<int64_t>(std::max<size_t>(device_bytes, 1))}, G.options().dtype(at::kByte));
    std::vector<char> host_ws(std::max<size_t>(host_bytes, 1));
    TORCH_CUSOLVER_CHECK(cusolverDnXsyevBatched(handle, params.get(), CUSOLVER_EIG_MODE_NOVECTOR,
                                                CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, G.data_ptr<double>(), n,
                                                CUDA_R_64F, eig.data_ptr<double>(), CUDA_R_64F, device_ws.data_ptr(),
                                                device_bytes, host_ws.data(), host_bytes, info.data_ptr<int>(), count));
    params.release();
    return;
  }
#endif
  // Older cuSOLVER (or NWOT_FORCE_SYEVJ): syevjBatched handles n <= 32 (the score is a sum,
  // so the eigenvalue order does not matter and no sorting is needed); larger n calls syevd
  // once per matrix on the stream (no batched syevd exists there).
  if (n <= 32) {
    SolverObject<syevjInfo_t, cusolverDnDestroySyevjInfo> params(cusolverDnCreateSyevjInfo);
    int lwork = 0;
    TORCH_CUSOLVER_CHECK(cusolverDnDsyevjBatched_bufferSize(
        handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER, static_cast<int>(n), G.data_ptr<double>(),
        static_cast<int>(n), eig.data_ptr<double>(), &lwork, params.get(), static_cast<int>(count)));
    at::Tensor work = at::empty({std::max<int64_t>(lwork, 1)}, G.options());
    TORCH_CUSOLVER_CHECK(cusolverDnDsyevjBatched(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                                 static_cast<int>(n), G.data_ptr<double>(), static_cast<int>(n),
                                                 eig.data_ptr<double>(), work.data_ptr<double>(), lwork,
                                                 info.data_ptr<int>(), params.get(), static_cast<int>(count)));
    params.release();
  } else {
    int lwork = 0;
    TORCH_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                                     static_cast<int>(n), G.data_ptr<double>(), static_cast<int>(n),
                                                     eig.data_ptr<double>(), &lwork));
    at::Tensor work = at::empty({std::max<int64_t>(lwork, 1)}, G.options());
    for (int64_t a = 0; a < count; ++a) {
      TORCH_CUSOLVER_CHECK(cusolverDnDsyevd(handle, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                            static_cast<int>(n), G.data_ptr<double>() + a * n * n,
                                            static_cast<int>(n), eig.data_ptr<double>() + a * n,
                                            work.data_ptr<double>(), lwork, info.data_ptr<int>() + a));
    }
  }
}

// Architectures per chunk: every per-architecture buffer (X [B, D], G [B, B] and as much again
// for the solver's workspace, eigenvalues [B], flags) within kChunkBytes and half the free
// device memory, and within the eigensolver's batch limits.
int64_t chunk_size(int64_t A, int64_t B, int64_t D) {
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t budget = std::min<int64_t>(kChunkBytes, static_cast<int64_t>(free_bytes / 2));
  const int64_t per_arch = 8 * (B * D + 2 * B * B + B) + 8;
  int64_t chunk = std::max<int64_t>(1, budget / per_arch);
  chunk = std::min(chunk, kMaxSolverBatch);
  chunk = std::min(chunk, std::max<int64_t>(1, kMaxSolverElements / (B * B)));
  TORCH_CHECK(B * B <= kMaxSolverElements, "J: batch ", B, " is too large for the eigensolver (batch^2 must be <= ",
              kMaxSolverElements, ")");
  return std::min(chunk, A);
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

  const int64_t chunk = chunk_size(A, B, D);
  // Workspace, allocated once per call and reused by every chunk.
  at::Tensor X = at::empty({chunk, B, D}, opts.dtype(at::kDouble));
  at::Tensor G = at::empty({chunk, B, B}, opts.dtype(at::kDouble));
  at::Tensor eig = at::empty({chunk, B}, opts.dtype(at::kDouble));
  at::Tensor info = at::empty({chunk}, opts.dtype(at::kInt));
  at::Tensor degenerate = at::zeros({A}, opts.dtype(at::kInt));

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
  s << ";eigensolver="
    << (NWOT_HAVE_SYEV_BATCHED && !force_syevj() ? "cusolverDnXsyevBatched" : "syevjBatched/syevd");
  return s.str();
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) { m.impl("jacob_cov_score", &jacob_cov_score_cuda); }

}  // namespace nwot_fast
