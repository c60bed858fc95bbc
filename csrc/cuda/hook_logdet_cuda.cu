// hook_logdet on CUDA: K by popcount in shared-memory tiles (exact integers), its singularity
// decided exactly on the device (exact_det.h: the same algorithm as the CPU), log|det K| by
// cuBLAS batched LU (getrfBatched) in float64, exactly where that LU's error bound fails
// (exact_det.h, the CPU's code), separately or fused in one call. Nothing is copied to the
// host: no synchronisation.
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

// --- exact singularity on the device (exact_det.h, the same steps as exact::quick_status and
// exact::exact_det, one block per matrix) ----------------------------------------------------

constexpr int kExactX = 32, kExactY = 8;  // block: 32 columns x 8 rows of the trailing matrix
constexpr int kExactThreads = kExactX * kExactY;
// Workspace per chunk of architectures (residues, row shifts, CRT digits).
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
// kNotFinite. work: [count, n, n] int64 residues; shifts: [count, n] int, the row scaling.
template <typename T>
__global__ void exact_singularity_kernel(const T* __restrict__ K_all, int64_t n, int64_t* __restrict__ work_all,
                                         int* __restrict__ shifts_all, const int64_t* __restrict__ primes,
                                         int64_t prime_count, int* __restrict__ status) {
  __shared__ int flag;
  __shared__ int pivot_row;
  __shared__ double shared[kExactThreads / 32];
  const int64_t a = blockIdx.x;
  const T* K = K_all + a * n * n;
  int64_t* work = work_all + a * n * n;
  int* shifts = shifts_all + a * n;
  const int tid = threadIdx.y * kExactX + threadIdx.x;
  const bool leader = tid == 0;

  bool bad = false;
  for (int64_t k = tid; k < n * n; k += kExactThreads) bad = bad || !exact::is_finite_entry(K[k]);
  if (block_any(bad, &flag)) {
    if (leader) status[a] = exact::kNotFinite;
    return;
  }
  // 1. A zero row, or two identical rows; each row's scaling to integers and H, the Hadamard
  // bound, on the way.
  bool zero_row = false;
  double bits = 0.0;
  for (int64_t i = tid; i < n; i += kExactThreads) {
    int shift = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int s = exact::entry_shift(K[i * n + j]);
      shift = s > shift ? s : shift;
    }
    shifts[i] = shift;
    const double row = exact::row_bits<exact::Fused>(K + i * n, n, shift);
    zero_row = zero_row || row == -INFINITY;
    if (row != -INFINITY) bits += row;
  }
  const double hadamard_bits = block_sum_exact(bits, shared);  // its barriers publish shifts
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
    for (int64_t k = tid; k < n * n; k += kExactThreads) work[k] = exact::entry_residue(K[k], shifts[k / n], p, inv_p);
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
  // The table holds max_bits_needed(n, entry bits) >= needed: the loop ends by `used`.
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

// The prime table for n x n matrices whose integer view has entries below 2^entry_bits
// (exact::kInt64EntryBits or kFloat64EntryBits): long enough for any such matrix.
at::Tensor primes_for(int64_t n, double entry_bits, const at::Device& device) {
  return device_primes(exact_primes_for_bits(exact::max_bits_needed(n, entry_bits)), device);
}

// Exact status of each K[a] (a float64 or int64 [A, n, n] tensor, contiguous) into status [A].
void exact_status(const at::Tensor& K, const at::Tensor& primes, at::Tensor& status) {
  const int64_t A = K.size(0), n = K.size(1);
  if (A == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t per_matrix = n * n * 8 + n * 4;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(A, kExactChunkBytes / std::max<int64_t>(1, per_matrix)));
  at::Tensor work = at::empty({chunk, n, n}, K.options().dtype(at::kLong));
  at::Tensor shifts = at::empty({chunk, n}, K.options().dtype(at::kInt));
  const dim3 threads(kExactX, kExactY);
  for (int64_t a0 = 0; a0 < A; a0 += chunk) {
    const int64_t c = std::min(chunk, A - a0);
    AT_DISPATCH_SWITCH(K.scalar_type(), "exact_status",
                       AT_DISPATCH_CASE(at::kLong, [&] {
                         exact_singularity_kernel<scalar_t><<<static_cast<unsigned>(c), threads, 0, stream>>>(
                             K.const_data_ptr<scalar_t>() + a0 * n * n, n, work.data_ptr<int64_t>(),
                             shifts.data_ptr<int>(), primes.const_data_ptr<int64_t>(), primes.size(0),
                             status.data_ptr<int>() + a0);
                       }) AT_DISPATCH_CASE(at::kDouble, [&] {
                         exact_singularity_kernel<scalar_t><<<static_cast<unsigned>(c), threads, 0, stream>>>(
                             K.const_data_ptr<scalar_t>() + a0 * n * n, n, work.data_ptr<int64_t>(),
                             shifts.data_ptr<int>(), primes.const_data_ptr<int64_t>(), primes.size(0),
                             status.data_ptr<int>() + a0);
                       }));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// S[a] from getrf's factors (exact::lu_logabsdet, in the GPU's fused arithmetic): -inf when
// K[a] is exactly singular, NaN when it has a non-finite entry; a nonsingular K[a] whose LU
// met a zero pivot (info > 0) or fails its error bound gets need_exact[a] = 1 (and NaN until
// exact_logdet_kernel computes it).
__global__ void logdet_from_lu_kernel(const double* __restrict__ lu, const int* __restrict__ info,
                                      const int* __restrict__ status, int64_t A, int64_t n,
                                      double* __restrict__ scores, int* __restrict__ need_exact) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= A) return;
  need_exact[a] = 0;
  if (status[a] != exact::kNonsingular) {
    scores[a] = status[a] == exact::kSingular ? -CUDART_INF : CUDART_NAN;
    return;
  }
  const exact::LuLogdet r = info[a] > 0 ? exact::LuLogdet{CUDART_NAN, false}
                                        : exact::lu_logabsdet<exact::Fused>(lu + a * n * n, n);
  scores[a] = r.trusted ? r.logdet : CUDART_NAN;
  need_exact[a] = r.trusted ? 0 : 1;
}

// The matrix K[a] for the exact fallback: the K tensor itself, or recomputed from the codes
// (fused op) into `buffer` (n x n float64: the integers are exact).
template <typename T>
struct MatrixOf {
  const T* K;
  __device__ const T* operator()(int64_t a, int64_t n, double*) const { return K + a * n * n; }
};
struct MatrixFromCodes {
  const int64_t* codes;
  const int64_t* mult;
  const int64_t* units;
  int64_t W;
  __device__ const double* operator()(int64_t a, int64_t n, double* buffer) const {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        long long disagree = 0;
        for (int64_t w = 0; w < W; ++w) {
          disagree += mult[a * W + w] * __popcll(static_cast<unsigned long long>(codes[(a * n + i) * W + w] ^
                                                                                 codes[(a * n + j) * W + w]));
        }
        buffer[i * n + j] = static_cast<double>(units[a] - disagree);
      }
    }
    return buffer;
  }
};

// log|det K[a]| exactly (exact::exact_det with digits: det mod every prime, CRT) for the
// matrices flagged by logdet_from_lu_kernel; one thread per matrix, the code the CPU runs
// (rare: a pivot from cancellation). The getrf buffer lu[a] is free by now and holds K[a]
// when it is recomputed from codes. Scratch per block: n * n residues, n shifts, the digits.
template <typename Matrix>
__global__ void exact_logdet_kernel(Matrix matrix, const int* __restrict__ need_exact, int64_t a0, int64_t n,
                                    const int64_t* __restrict__ primes, int64_t prime_count,
                                    double* __restrict__ lu, int64_t* __restrict__ work,
                                    int* __restrict__ shifts, int64_t* __restrict__ digits,
                                    double* __restrict__ scores) {
  const int64_t a = a0 + blockIdx.x;
  if (!need_exact[a]) return;
  const auto* K = matrix(a, n, lu + a * n * n);
  int* row_shifts = shifts + static_cast<int64_t>(blockIdx.x) * n;
  double needed = 0.0;
  double logdet = CUDART_NAN;
  if (exact::quick_status<exact::Fused>(K, n, row_shifts, &needed) == exact::kUndecided) {
    const int status = exact::exact_det(K, n, row_shifts, needed, primes, prime_count,
                                        work + static_cast<int64_t>(blockIdx.x) * n * n,
                                        digits + static_cast<int64_t>(blockIdx.x) * prime_count, &logdet);
    if (status != exact::kNonsingular) logdet = CUDART_NAN;  // cannot happen: status was proven
  }
  scores[a] = logdet;
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
// has the same |det|. Then the exact log|det| where the LU's error bound fails.
template <typename Matrix>
void logdet_in_place(at::Tensor& lu, const at::Tensor& status, const at::Tensor& primes, Matrix matrix,
                     at::Tensor& scores) {
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
  at::Tensor need_exact = at::empty({A}, opts.dtype(at::kInt));
  double** ptr_array = reinterpret_cast<double**>(ptrs.data_ptr<int64_t>());
  matrix_pointers_kernel<<<static_cast<unsigned>(ceil_div(A, 256)), 256, 0, stream>>>(lu.data_ptr<double>(), n * n,
                                                                                       A, ptr_array);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  TORCH_CUDABLAS_CHECK(cublasDgetrfBatched(handle, static_cast<int>(n), ptr_array, static_cast<int>(n),
                                           pivots.data_ptr<int>(), info.data_ptr<int>(), static_cast<int>(A)));
  logdet_from_lu_kernel<<<static_cast<unsigned>(ceil_div(A, 256)), 256, 0, stream>>>(
      lu.const_data_ptr<double>(), info.const_data_ptr<int>(), status.const_data_ptr<int>(), A, n,
      scores.data_ptr<double>(), need_exact.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = primes.size(0);
  const int64_t per_matrix = n * n * 8 + n * 4 + count * 8;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(A, kExactChunkBytes / per_matrix));
  at::Tensor work = at::empty({chunk, n, n}, opts.dtype(at::kLong));
  at::Tensor shifts = at::empty({chunk, n}, opts.dtype(at::kInt));
  at::Tensor digits = at::empty({chunk, count}, opts.dtype(at::kLong));
  for (int64_t a0 = 0; a0 < A; a0 += chunk) {
    const int64_t c = std::min(chunk, A - a0);
    exact_logdet_kernel<<<static_cast<unsigned>(c), 1, 0, stream>>>(
        matrix, need_exact.const_data_ptr<int>(), a0, n, primes.const_data_ptr<int64_t>(), count, lu.data_ptr<double>(),
        work.data_ptr<int64_t>(), shifts.data_ptr<int>(), digits.data_ptr<int64_t>(), scores.data_ptr<double>());
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
  const double entry_bits = K.scalar_type() == at::kLong ? exact::kInt64EntryBits : exact::kFloat64EntryBits;
  const at::Tensor primes = primes_for(K.size(1), entry_bits, K.device());
  exact_status(K, primes, status);
  // A float64 copy that getrf factors in place.
  at::Tensor lu = at::empty(K.sizes(), K.options().dtype(at::kDouble));
  lu.copy_(K);
  AT_DISPATCH_SWITCH(K.scalar_type(), "logdet_score_cuda",
                     AT_DISPATCH_CASE(at::kLong, [&] {
                       logdet_in_place(lu, status, primes, MatrixOf<scalar_t>{K.const_data_ptr<scalar_t>()}, scores);
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       logdet_in_place(lu, status, primes, MatrixOf<scalar_t>{K.const_data_ptr<scalar_t>()}, scores);
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
  // Integers below 2^53: the int64 table suffices.
  const at::Tensor primes = primes_for(B, exact::kInt64EntryBits, codes.device());
  if (B > 0) {
    launch_agreement(codes, mult, units, lu);
    exact_status(lu, primes, status);
  }
  logdet_in_place(lu, status, primes,
                  MatrixFromCodes{codes.const_data_ptr<int64_t>(), mult.const_data_ptr<int64_t>(),
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
