// hook_logdet on the CPU: the Hamming-agreement kernel K by popcount (exact integers), its
// singularity decided exactly (exact_det.h) and log|det K| by LU with partial pivoting in
// float64, separately or fused. Also the host half of exact_det.h (primes, decision). K's
// popcount loops (hamming_kernels.h) are built for the baseline, AVX2 and AVX-512 and chosen at
// run time (cpu_isa.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../exact_det.h"
#include "../nwot.h"

#define NWOT_VARIANT_HEADER "hamming_kernels.h"
#include "cpu_variants.h"

namespace nwot_fast {
namespace {

// K for one architecture into the row-major [B, B] buffer K (int64_t or double), by the CPU
// kernel variant in use (hamming_kernels.h).
template <typename out_t>
void agreement_kernel(const int64_t* codes, const int64_t* mult, int64_t units, int64_t B, int64_t W,
                      std::vector<int64_t>& scratch, out_t* K) {
  NWOT_CPU_DISPATCH(agreement_kernel<out_t>)(codes, mult, units, B, W, scratch, K);
}

// log|det a| of the row-major n x n matrix a (overwritten by its LU factors), partial
// pivoting as LAPACK getrf; -inf as soon as a pivot is exactly zero.
double logabsdet_lu(double* a, int64_t n) {
  double logdet = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    int64_t p = k;
    double best = std::fabs(a[k * n + k]);
    for (int64_t i = k + 1; i < n; ++i) {
      const double v = std::fabs(a[i * n + k]);
      if (v > best) {
        best = v;
        p = i;
      }
    }
    if (best == 0.0) return -std::numeric_limits<double>::infinity();
    if (p != k) std::swap_ranges(a + k * n + k, a + k * n + n, a + p * n + k);
    const double pivot = a[k * n + k];
    logdet += std::log(best);
    const double* pivot_row = a + k * n;
    for (int64_t i = k + 1; i < n; ++i) {
      double* row = a + i * n;
      const double l = row[k] / pivot;
      if (l == 0.0) continue;
      for (int64_t j = k + 1; j < n; ++j) row[j] -= l * pivot_row[j];
    }
  }
  return logdet;
}

// log|det| of a K proven nonsingular whose float64 LU met an exactly zero pivot: the
// double-double LU (exact_det.h); if even that meets a zero pivot, raise rather than return
// -inf for a nonsingular K.
template <typename T>
double logabsdet_nonsingular_fallback(const T* K, int64_t n, int64_t a) {
  std::vector<double> hi(K, K + n * n), lo(static_cast<size_t>(n * n), 0.0);
  const double s = exact::logabsdet_double_double(hi.data(), lo.data(), n);
  TORCH_CHECK(!std::isinf(s), "logdet_score: K[", a, "] is nonsingular (proved by its determinant modulo a prime) ",
              "but too ill-conditioned for LU in float64 and in double-double arithmetic");
  return s;
}

// Score of one matrix: -inf if exactly singular, else log|det| of the float64 LU (with the
// fallback above). `lu` holds K as float64 and is overwritten.
template <typename T>
double logdet_one(const T* K, int64_t n, int64_t a, double* lu, int64_t* work) {
  const int status = exact_singularity(K, n, work);
  if (status == exact::kSingular) return -std::numeric_limits<double>::infinity();
  const double s = logabsdet_lu(lu, n);
  if (std::isinf(s) && status == exact::kNonsingular) return logabsdet_nonsingular_fallback(K, n, a);
  return s;  // kNotInteger keeps the floating rule: -inf at an exactly zero pivot
}

template <typename T>
void logdet_batch(const T* Kp, int64_t A, int64_t B, double* S) {
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> lu(static_cast<size_t>(B * B));
    std::vector<int64_t> work(static_cast<size_t>(B * B));
    for (int64_t a = begin; a < end; ++a) {
      const T* K = Kp + a * B * B;
      std::copy(K, K + B * B, lu.begin());
      S[a] = logdet_one(K, B, a, lu.data(), work.data());
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

}  // namespace

std::vector<int64_t> exact_primes(int64_t count) {
  static std::mutex mutex;
  static std::vector<int64_t> primes;  // grows, never shrinks: the same list for every caller
  const std::lock_guard<std::mutex> lock(mutex);
  int64_t candidate = primes.empty() ? (int64_t(1) << 31) - 1 : primes.back() - 2;
  while (static_cast<int64_t>(primes.size()) < count) {
    bool prime = true;
    for (int64_t d = 3; d * d <= candidate; d += 2) {
      if (candidate % d == 0) {
        prime = false;
        break;
      }
    }
    if (prime) primes.push_back(candidate);
    candidate -= 2;  // 2^31 - 1 is odd; the primes below it are odd
  }
  return std::vector<int64_t>(primes.begin(), primes.begin() + count);
}

int64_t exact_primes_for_bits(double bits) {
  // Every prime here is > 2^30.99, so this count is enough; exact_primes makes them.
  return static_cast<int64_t>(std::ceil(bits / 30.99)) + 1;
}

template <typename T>
int exact_singularity(const T* K, int64_t n, int64_t* work) {
  if (n == 0) return exact::kNonsingular;
  for (int64_t k = 0; k < n * n; ++k) {
    if (!exact::is_integer_entry(K[k])) return exact::kNotInteger;
  }
  // 1. A zero row, or two identical rows.
  double hadamard_bits = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = K + i * n;
    double squares = 0.0;
    for (int64_t j = 0; j < n; ++j) squares += static_cast<double>(row[j]) * static_cast<double>(row[j]);
    if (squares == 0.0) return exact::kSingular;
    hadamard_bits += 0.5 * std::log2(squares);
    for (int64_t r = 0; r < i; ++r) {
      if (std::equal(row, row + n, K + r * n)) return exact::kSingular;
    }
  }
  // 2.-4. det K modulo the primes, until their product exceeds 2^(H + margin).
  const double needed = hadamard_bits + exact::kMarginBits;
  const int64_t count = exact_primes_for_bits(needed);
  const std::vector<int64_t> primes = exact_primes(count);
  double bits = 0.0;
  for (int64_t q = 0; q < count && bits <= needed; ++q) {
    const int64_t p = primes[q];
    const double inv_p = 1.0 / static_cast<double>(p);
    for (int64_t k = 0; k < n * n; ++k) work[k] = exact::reduce(K[k], p);
    bool zero = false;
    for (int64_t k = 0; k < n && !zero; ++k) {
      int64_t piv = k;
      while (piv < n && work[piv * n + k] == 0) ++piv;
      if (piv == n) {
        zero = true;
        break;
      }
      if (piv != k) std::swap_ranges(work + k * n + k, work + k * n + n, work + piv * n + k);
      const int64_t inv = exact::inv_mod(work[k * n + k], p);
      const int64_t* pivot_row = work + k * n;
      for (int64_t i = k + 1; i < n; ++i) {
        int64_t* row = work + i * n;
        if (row[k] == 0) continue;
        const int64_t f = p - exact::mul_mod(row[k], inv, p, inv_p);  // -row[k] / pivot
        for (int64_t j = k + 1; j < n; ++j) {
          const int64_t v = row[j] + exact::mul_mod(f, pivot_row[j], p, inv_p);
          row[j] = v >= p ? v - p : v;
        }
      }
    }
    if (!zero) return exact::kNonsingular;
    bits += std::log2(static_cast<double>(p));
  }
  return exact::kSingular;
}

template int exact_singularity<int64_t>(const int64_t*, int64_t, int64_t*);
template int exact_singularity<double>(const double*, int64_t, int64_t*);

at::Tensor hamming_kernel_cpu(const at::Tensor& codes_in, const at::Tensor& mult_in, const at::Tensor& units_in) {
  check_codes(codes_in, mult_in, units_in);
  check_cpu(codes_in, "codes");
  const at::Tensor codes = codes_in.contiguous(), mult = mult_in.contiguous(), units = units_in.contiguous();
  const int64_t A = codes.size(0), B = codes.size(1), W = codes.size(2);
  at::Tensor K = at::empty({A, B, B}, codes.options());
  if (K.numel() == 0) return K;
  const int64_t* cp = codes.const_data_ptr<int64_t>();
  const int64_t* mp = mult.const_data_ptr<int64_t>();
  const int64_t* up = units.const_data_ptr<int64_t>();
  int64_t* Kp = K.data_ptr<int64_t>();
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch;
    for (int64_t a = begin; a < end; ++a) {
      agreement_kernel<int64_t>(cp + a * B * W, mp + a * W, up[a], B, W, scratch, Kp + a * B * B);
    }
  });
  return K;
}

at::Tensor logdet_score_cpu(const at::Tensor& K_in) {
  check_kernel_matrix(K_in);
  check_cpu(K_in, "K");
  const at::Tensor K = K_in.contiguous();
  const int64_t A = K.size(0), B = K.size(1);
  at::Tensor scores = at::empty({A}, K.options().dtype(at::kDouble));
  if (A == 0) return scores;
  double* S = scores.data_ptr<double>();
  AT_DISPATCH_SWITCH(K.scalar_type(), "logdet_score_cpu",
                     AT_DISPATCH_CASE(at::kLong, [&] { logdet_batch(K.const_data_ptr<scalar_t>(), A, B, S); })
                         AT_DISPATCH_CASE(at::kDouble, [&] { logdet_batch(K.const_data_ptr<scalar_t>(), A, B, S); }));
  return scores;
}

at::Tensor hook_logdet_score_cpu(const at::Tensor& codes_in, const at::Tensor& mult_in, const at::Tensor& units_in) {
  check_codes(codes_in, mult_in, units_in);
  check_cpu(codes_in, "codes");
  const at::Tensor codes = codes_in.contiguous(), mult = mult_in.contiguous(), units = units_in.contiguous();
  const int64_t A = codes.size(0), B = codes.size(1), W = codes.size(2);
  at::Tensor scores = at::empty({A}, codes.options().dtype(at::kDouble));
  if (A == 0) return scores;
  const int64_t* cp = codes.const_data_ptr<int64_t>();
  const int64_t* mp = mult.const_data_ptr<int64_t>();
  const int64_t* up = units.const_data_ptr<int64_t>();
  double* S = scores.data_ptr<double>();
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch;
    std::vector<double> K(static_cast<size_t>(B * B)), lu(static_cast<size_t>(B * B));
    std::vector<int64_t> work(static_cast<size_t>(B * B));
    for (int64_t a = begin; a < end; ++a) {
      if (B == 0) {
        S[a] = 0.0;  // det of the empty matrix is 1
        continue;
      }
      agreement_kernel<double>(cp + a * B * W, mp + a * W, up[a], B, W, scratch, K.data());
      std::copy(K.begin(), K.end(), lu.begin());
      S[a] = logdet_one(K.data(), B, a, lu.data(), work.data());
    }
  });
  return scores;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) {
  m.impl("hamming_kernel", &hamming_kernel_cpu);
  m.impl("logdet_score", &logdet_score_cpu);
  m.impl("hook_logdet_score", &hook_logdet_score_cpu);
}

}  // namespace nwot_fast
