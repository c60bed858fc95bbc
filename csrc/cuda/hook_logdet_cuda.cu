// hook_logdet on CUDA: K by popcount in shared-memory tiles (exact integers), its singularity
// decided exactly on the device (exact_det.h: the same algorithm and arithmetic as the CPU),
// log|det K| by cuBLAS batched LU (getrfBatched) in float64, separately or fused in one call.
// Nothing is copied to the host: no synchronisation.
#include <torch/library.h>

#include <math_constants.h>

#include <map>
#include <mutex>
#include <utility>

#include "../exact_det.h"
#include "common.cuh"

namespace nwot_fast {
namespace {

constexpr int kTile = 16;       // K tile: kTile x kTile threads, one K entry each
constexpr int kTileWords = 32;  // code words staged in shared memory per step

// Grid z is limited to 65535: larger A is launched in slices of this many architectures.
constexpr int64_t kMaxGridZ = 65535;

// K[a, i, j] = units[a] - sum_w mult[a, w] * popcount(codes[a, i, w] ^ codes[a, j, w]) for the
// tiles on and above the diagonal (K is symmetric), each entry written to both halves;
// a = a0 + blockIdx.z.
template <typename out_t>
__global__ void agreement_kernel(const int64_t* __restrict__ codes, const int64_t* __restrict__ mult,
                                 const int64_t* __restrict__ units, int64_t a0, int64_t B, int64_t W,
                                 out_t* __restrict__ K) {
  if (blockIdx.x < blockIdx.y) return;  // a tile below the diagonal: its mirror writes it
  __shared__ unsigned long long rows_i[kTile][kTileWords + 1];
  __shared__ unsigned long long rows_j[kTile][kTileWords + 1];
  __shared__ long long weights[kTileWords];
  const int64_t a = a0 + blockIdx.z;
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
  if (i < B && j < B && j >= i) {
    const out_t v = static_cast<out_t>(units[a] - disagree);
    K[(a * B + i) * B + j] = v;
    K[(a * B + j) * B + i] = v;
  }
}

__global__ void matrix_pointers_kernel(double* base, int64_t stride, int64_t count, double** ptrs) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a < count) ptrs[a] = base + a * stride;
}

// --- exact singularity on the device (exact_det.h, the same steps as exact_singularity) ------

constexpr int kExactX = 32, kExactY = 8;  // block: 32 columns x 8 rows of the trailing matrix
constexpr int kExactThreads = kExactX * kExactY;
// int64 residue workspace per chunk of architectures.
constexpr int64_t kExactChunkBytes = int64_t(256) << 20;

// True in every thread iff v is true in some thread of the block. `flag` is shared.
__device__ bool block_any(bool v, int* flag) {
  if (threadIdx.x == 0 && threadIdx.y == 0) *flag = 0;
  __syncthreads();
  if (v) *flag = 1;
  __syncthreads();
  const bool any = *flag != 0;
  __syncthreads();
  return any;
}

__device__ double block_sum_exact(double v, double* shared) {
  const int tid = threadIdx.y * kExactX + threadIdx.x;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((tid & 31) == 0) shared[tid >> 5] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kExactThreads / 32; ++w) total += shared[w];  // same order in every thread
  __syncthreads();
  return total;
}

// One block per matrix a of the chunk: status[a] = exact::kNonsingular / kSingular /
// kNotInteger. work: [count, n, n] int64 residues.
template <typename T>
__global__ void exact_singularity_kernel(const T* __restrict__ K_all, int64_t n, int64_t* __restrict__ work_all,
                                         const int64_t* __restrict__ primes, int64_t prime_count,
                                         int* __restrict__ status) {
  __shared__ int flag;
  __shared__ int pivot_row;
  __shared__ double shared[kExactThreads / 32];
  const int64_t a = blockIdx.x;
  const T* K = K_all + a * n * n;
  int64_t* work = work_all + a * n * n;
  const int tid = threadIdx.y * kExactX + threadIdx.x;
  const bool leader = tid == 0;

  bool bad = false;
  for (int64_t k = tid; k < n * n; k += kExactThreads) bad = bad || !exact::is_integer_entry(K[k]);
  if (block_any(bad, &flag)) {
    if (leader) status[a] = exact::kNotInteger;
    return;
  }
  // 1. A zero row, or two identical rows; H, the Hadamard bound, on the way.
  bool zero_row = false;
  double bits = 0.0;
  for (int64_t i = tid; i < n; i += kExactThreads) {
    double squares = 0.0;
    for (int64_t j = 0; j < n; ++j) squares += static_cast<double>(K[i * n + j]) * static_cast<double>(K[i * n + j]);
    zero_row = zero_row || squares == 0.0;
    if (squares > 0.0) bits += 0.5 * log2(squares);
  }
  const double hadamard_bits = block_sum_exact(bits, shared);
  bool twin = false;
  for (int64_t e = tid; e < n * n && !zero_row; e += kExactThreads) {
    const int64_t i = e / n, r = e % n;
    if (r >= i) continue;
    bool same = true;
    for (int64_t j = 0; j < n && same; ++j) same = K[i * n + j] == K[r * n + j];
    twin = twin || same;
  }
  if (block_any(zero_row || twin, &flag)) {
    if (leader) status[a] = exact::kSingular;
    return;
  }
  // 2.-4. det K modulo the primes, until their product exceeds 2^(H + margin).
  const double needed = hadamard_bits + exact::kMarginBits;
  double used = 0.0;
  for (int64_t q = 0; q < prime_count && used <= needed; ++q) {
    const int64_t p = primes[q];
    const double inv_p = 1.0 / static_cast<double>(p);
    for (int64_t k = tid; k < n * n; k += kExactThreads) work[k] = exact::reduce(K[k], p);
    __syncthreads();
    bool zero = false;
    for (int64_t k = 0; k < n; ++k) {
      if (leader) pivot_row = static_cast<int>(n);
      __syncthreads();
      for (int64_t i = k + tid; i < n; i += kExactThreads) {
        if (work[i * n + k] != 0) atomicMin(&pivot_row, static_cast<int>(i));
      }
      __syncthreads();
      const int64_t piv = pivot_row;
      if (piv == n) {  // the same in every thread
        zero = true;
        break;
      }
      if (piv != k) {
        for (int64_t j = k + tid; j < n; j += kExactThreads) {
          const int64_t t = work[k * n + j];
          work[k * n + j] = work[piv * n + j];
          work[piv * n + j] = t;
        }
      }
      __syncthreads();
      // Column k below the pivot becomes the row factors -K_ik / K_kk (it is not read again).
      const int64_t inv = exact::inv_mod(work[k * n + k], p);
      for (int64_t i = k + 1 + tid; i < n; i += kExactThreads) {
        const int64_t v = work[i * n + k];
        work[i * n + k] = v == 0 ? 0 : p - exact::mul_mod(v, inv, p, inv_p);
      }
      __syncthreads();
      for (int64_t i = k + 1 + threadIdx.y; i < n; i += kExactY) {
        const int64_t f = work[i * n + k];
        if (f == 0) continue;
        for (int64_t j = k + 1 + threadIdx.x; j < n; j += kExactX) {
          const int64_t v = work[i * n + j] + exact::mul_mod(f, work[k * n + j], p, inv_p);
          work[i * n + j] = v >= p ? v - p : v;
        }
      }
      __syncthreads();
    }
    if (!zero) {
      if (leader) status[a] = exact::kNonsingular;
      return;
    }
    used += log2(static_cast<double>(p));
    __syncthreads();
  }
  if (leader) status[a] = exact::kSingular;
}

// The prime table of exact_det.h on `device`, uploaded once per device and length (pinned
// memory, asynchronous copy: no synchronisation, also under set_sync_debug_mode("error")).
at::Tensor device_primes(int64_t count, const at::Device& device) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::pair<int, int64_t>, at::Tensor>();  // never freed: outlives CUDA teardown
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(static_cast<int>(device.index()), count);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  const std::vector<int64_t> primes = exact_primes(count);
  at::Tensor host = at::empty({count}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(primes.begin(), primes.end(), host.data_ptr<int64_t>());
  at::Tensor on_device = host.to(device, /*non_blocking=*/true);
  cache->emplace(key, on_device);
  return on_device;
}

// Exact status of each K[a] (a float64 or int64 [A, n, n] tensor, contiguous) into status [A].
void exact_status(const at::Tensor& K, at::Tensor& status) {
  const int64_t A = K.size(0), n = K.size(1);
  if (A == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t count = exact_primes_for_bits(exact::max_bits_needed(n));
  const at::Tensor primes = device_primes(count, K.device());
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(A, kExactChunkBytes / std::max<int64_t>(1, n * n * 8)));
  at::Tensor work = at::empty({chunk, n, n}, K.options().dtype(at::kLong));
  const dim3 threads(kExactX, kExactY);
  for (int64_t a0 = 0; a0 < A; a0 += chunk) {
    const int64_t c = std::min(chunk, A - a0);
    AT_DISPATCH_SWITCH(K.scalar_type(), "exact_status",
                       AT_DISPATCH_CASE(at::kLong, [&] {
                         exact_singularity_kernel<scalar_t><<<static_cast<unsigned>(c), threads, 0, stream>>>(
                             K.const_data_ptr<scalar_t>() + a0 * n * n, n, work.data_ptr<int64_t>(),
                             primes.const_data_ptr<int64_t>(), count, status.data_ptr<int>() + a0);
                       }) AT_DISPATCH_CASE(at::kDouble, [&] {
                         exact_singularity_kernel<scalar_t><<<static_cast<unsigned>(c), threads, 0, stream>>>(
                             K.const_data_ptr<scalar_t>() + a0 * n * n, n, work.data_ptr<int64_t>(),
                             primes.const_data_ptr<int64_t>(), count, status.data_ptr<int>() + a0);
                       }));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// S[a] = sum log|U_kk|; -inf when K[a] is exactly singular, or (not an integer matrix) when
// getrf met an exactly zero pivot (info > 0). A K proven nonsingular with info > 0 is left to
// nonsingular_fallback_kernel (NaN here until then).
__global__ void logdet_from_lu_kernel(const double* __restrict__ lu, const int* __restrict__ info,
                                      const int* __restrict__ status, int64_t A, int64_t n,
                                      double* __restrict__ scores) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= A) return;
  if (status[a] == exact::kSingular || (info[a] > 0 && status[a] == exact::kNotInteger)) {
    scores[a] = -CUDART_INF;
    return;
  }
  if (info[a] > 0) {
    scores[a] = CUDART_NAN;
    return;
  }
  const double* m = lu + a * n * n;
  double s = 0.0;
  for (int64_t k = 0; k < n; ++k) s += log(fabs(m[k * n + k]));
  scores[a] = s;
}

// The entries of K[a] from the K tensor itself, or recomputed from the codes (fused op).
template <typename T>
struct EntriesOf {
  const T* K;
  __device__ double operator()(int64_t a, int64_t i, int64_t j, int64_t n) const {
    return static_cast<double>(K[(a * n + i) * n + j]);
  }
};
struct EntriesFromCodes {
  const int64_t* codes;
  const int64_t* mult;
  const int64_t* units;
  int64_t W;
  __device__ double operator()(int64_t a, int64_t i, int64_t j, int64_t n) const {
    long long disagree = 0;
    for (int64_t w = 0; w < W; ++w) {
      disagree += mult[a * W + w] * __popcll(static_cast<unsigned long long>(codes[(a * n + i) * W + w] ^
                                                                             codes[(a * n + j) * W + w]));
    }
    return static_cast<double>(units[a] - disagree);
  }
};

// A K proven nonsingular whose float64 LU met a zero pivot (rare: exact cancellation): the
// double-double LU of exact_det.h, one thread, in the getrf buffer lu[a] (no longer needed) and
// scratch (hi, lo). If even that meets a zero pivot the score is NaN: the CUDA op cannot raise
// without synchronising, and -inf would say "singular", which K is not.
template <typename Entries>
__global__ void nonsingular_fallback_kernel(Entries entries, const int* __restrict__ info,
                                            const int* __restrict__ status, int64_t a0, int64_t n,
                                            double* __restrict__ lu, double* __restrict__ scratch,
                                            double* __restrict__ scores) {
  const int64_t a = a0 + blockIdx.x;
  if (threadIdx.x != 0 || info[a] <= 0 || status[a] != exact::kNonsingular) return;
  double* hi = lu + a * n * n;
  double* lo = scratch + static_cast<int64_t>(blockIdx.x) * n * n;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      hi[i * n + j] = entries(a, i, j, n);
      lo[i * n + j] = 0.0;
    }
  }
  const double s = exact::logabsdet_double_double(hi, lo, n);
  scores[a] = isinf(s) ? CUDART_NAN : s;
}

void launch_agreement(const at::Tensor& codes, const at::Tensor& mult, const at::Tensor& units, at::Tensor& K) {
  const int64_t A = codes.size(0), B = codes.size(1), W = codes.size(2);
  const dim3 threads(kTile, kTile);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t a0 = 0; a0 < A; a0 += kMaxGridZ) {
    const dim3 blocks(static_cast<unsigned>(ceil_div(B, kTile)), static_cast<unsigned>(ceil_div(B, kTile)),
                      static_cast<unsigned>(std::min(kMaxGridZ, A - a0)));
    if (K.scalar_type() == at::kLong) {
      agreement_kernel<int64_t><<<blocks, threads, 0, stream>>>(codes.const_data_ptr<int64_t>(),
                                                                mult.const_data_ptr<int64_t>(),
                                                                units.const_data_ptr<int64_t>(), a0, B, W,
                                                                K.data_ptr<int64_t>());
    } else {
      agreement_kernel<double><<<blocks, threads, 0, stream>>>(codes.const_data_ptr<int64_t>(),
                                                               mult.const_data_ptr<int64_t>(),
                                                               units.const_data_ptr<int64_t>(), a0, B, W,
                                                               K.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Scores from the float64 copy `lu` [A, n, n] of K (overwritten by getrf) and the exact
// status of each K. K is symmetric here or, for a general K, LU of the column-major view K^T
// has the same |det|. Then the fallback for proven nonsingular K with a zero pivot.
template <typename Entries>
void logdet_in_place(at::Tensor& lu, const at::Tensor& status, Entries entries, at::Tensor& scores) {
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
  TORCH_CUDABLAS_CHECK(cublasDgetrfBatched(handle, static_cast<int>(n), ptr_array, static_cast<int>(n),
                                           pivots.data_ptr<int>(), info.data_ptr<int>(), static_cast<int>(A)));
  logdet_from_lu_kernel<<<static_cast<unsigned>(ceil_div(A, 256)), 256, 0, stream>>>(
      lu.const_data_ptr<double>(), info.const_data_ptr<int>(), status.const_data_ptr<int>(), A, n,
      scores.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(A, kExactChunkBytes / (n * n * 8)));
  at::Tensor scratch = at::empty({chunk, n, n}, opts);
  for (int64_t a0 = 0; a0 < A; a0 += chunk) {
    const int64_t c = std::min(chunk, A - a0);
    nonsingular_fallback_kernel<<<static_cast<unsigned>(c), 32, 0, stream>>>(
        entries, info.const_data_ptr<int>(), status.const_data_ptr<int>(), a0, n, lu.data_ptr<double>(),
        scratch.data_ptr<double>(), scores.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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

at::Tensor logdet_score_cuda(const at::Tensor& K_in) {
  check_kernel_matrix(K_in);
  check_cuda(K_in, "K");
  const c10::cuda::CUDAGuard guard(K_in.device());
  const at::Tensor K = K_in.contiguous();
  at::Tensor scores = at::empty({K.size(0)}, K.options().dtype(at::kDouble));
  if (K.size(0) == 0) return scores;
  at::Tensor status = at::empty({K.size(0)}, K.options().dtype(at::kInt));
  exact_status(K, status);
  // A float64 copy that getrf factors in place.
  at::Tensor lu = at::empty(K.sizes(), K.options().dtype(at::kDouble));
  lu.copy_(K);
  AT_DISPATCH_SWITCH(K.scalar_type(), "logdet_score_cuda",
                     AT_DISPATCH_CASE(at::kLong, [&] {
                       logdet_in_place(lu, status, EntriesOf<scalar_t>{K.const_data_ptr<scalar_t>()}, scores);
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       logdet_in_place(lu, status, EntriesOf<scalar_t>{K.const_data_ptr<scalar_t>()}, scores);
                     }));
  return scores;
}

at::Tensor hook_logdet_score_cuda(const at::Tensor& codes_in, const at::Tensor& mult_in, const at::Tensor& units_in) {
  check_codes_cuda(codes_in, mult_in, units_in);
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous(), mult = mult_in.contiguous(), units = units_in.contiguous();
  const int64_t A = codes.size(0), B = codes.size(1), W = codes.size(2);
  at::Tensor scores = at::empty({A}, codes.options().dtype(at::kDouble));
  if (A == 0) return scores;
  // K goes straight into the float64 LU workspace (exact: entries are integers < 2^53).
  at::Tensor lu = at::empty({A, B, B}, codes.options().dtype(at::kDouble));
  at::Tensor status = at::empty({A}, codes.options().dtype(at::kInt));
  if (B > 0) {
    launch_agreement(codes, mult, units, lu);
    exact_status(lu, status);
  }
  logdet_in_place(lu, status,
                  EntriesFromCodes{codes.const_data_ptr<int64_t>(), mult.const_data_ptr<int64_t>(),
                                   units.const_data_ptr<int64_t>(), W},
                  scores);
  return scores;
}

TORCH_LIBRARY_IMPL(nwot_fast, CUDA, m) {
  m.impl("hamming_kernel", &hamming_kernel_cuda);
  m.impl("logdet_score", &logdet_score_cuda);
  m.impl("hook_logdet_score", &hook_logdet_score_cuda);
}

}  // namespace nwot_fast
