// hook_logdet on the CPU: the Hamming-agreement kernel K by popcount (exact integers), its
// singularity decided exactly (exact_det.h) and log|det K| by LU with partial pivoting in
// float64 (exactly where that LU's error bound fails), separately or fused. Also the host
// half of exact_det.h (primes, decision). K's popcount loops (hamming_kernels.h) are built for
// the baseline, AVX2 and AVX-512 and chosen at run time (cpu_isa.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
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

// Each product rounded on its own before the add: the CPU build's arithmetic. GCC contracts
// a * b + c into an FMA across statements on any FMA target (-ffp-contract=fast, its default)
// and clang within one, so the product passes an empty asm the optimiser cannot see into.
struct Unfused {
  static double madd(double a, double b, double c) {
    double product = a * b;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __asm__("" : "+x"(product));
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
    __asm__("" : "+w"(product));
#else
    volatile double rounded = product;
    product = rounded;
#endif
    return product + c;
  }
};

// NWOT_CPU_ARITHMETIC (read per call): "fused" runs the LU and the decision code with fused
// multiply-add (exact::Fused, std::fma), the GPU's arithmetic, so that the CPU tests exercise
// the decisions in both; unset, empty or "unfused": the CPU build's own (Unfused).
bool fused_arithmetic() {
  const char* v = std::getenv("NWOT_CPU_ARITHMETIC");
  if (v == nullptr || std::strcmp(v, "") == 0 || std::strcmp(v, "unfused") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "fused") == 0, "NWOT_CPU_ARITHMETIC must be 'fused' or 'unfused', got '", v, "'");
  return true;
}

// LU with partial pivoting of the row-major n x n matrix a in place, as LAPACK getrf: whole
// rows swapped, L's multipliers stored below the diagonal. False at a zero (or NaN) pivot
// column, where the factors stop.
template <typename Arith>
bool lu_factor(double* a, int64_t n) {
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
    if (!(best > 0.0)) return false;
    if (p != k) std::swap_ranges(a + k * n, a + k * n + n, a + p * n);
    const double pivot = a[k * n + k];
    const double* pivot_row = a + k * n;
    for (int64_t i = k + 1; i < n; ++i) {
      double* row = a + i * n;
      const double l = row[k] / pivot;
      row[k] = l;
      if (l == 0.0) continue;  // adds exact zeros: skipping them changes nothing
      for (int64_t j = k + 1; j < n; ++j) row[j] = Arith::madd(-l, pivot_row[j], row[j]);
    }
  }
  return true;
}

// Buffers of one worker: the LU, the residues, the row shifts and the CRT digits.
struct Workspace {
  std::vector<double> lu;
  std::vector<int64_t> work, digits;
  std::vector<int> shifts;
  explicit Workspace(int64_t n) : lu(n * n), work(n * n), shifts(n) {}
};

// Score of one matrix (exact_det.h): NaN if an entry is not finite, -inf if exactly singular,
// else log|det| of the float64 LU if its error bound keeps the contract, else exactly (CRT).
template <typename Arith, typename T>
double logdet_one(const T* K, int64_t n, Workspace& ws) {
  if (n == 0) return 0.0;  // det of the empty matrix is 1
  double needed = 0.0;
  int status = exact::quick_status<Arith>(K, n, ws.shifts.data(), &needed);
  if (status == exact::kNotFinite) return std::numeric_limits<double>::quiet_NaN();
  if (status == exact::kSingular) return -std::numeric_limits<double>::infinity();
  const std::vector<int64_t> primes = exact_primes(exact_primes_for_bits(needed));
  const int64_t count = static_cast<int64_t>(primes.size());
  status = exact::exact_det(K, n, ws.shifts.data(), needed, primes.data(), count, ws.work.data(), nullptr, nullptr);
  TORCH_CHECK(status != exact::kUndecided, "logdet_score: internal error, a prime table of ", count,
              " primes for ", needed, " bits");
  if (status == exact::kSingular) return -std::numeric_limits<double>::infinity();
  std::copy(K, K + n * n, ws.lu.begin());
  if (lu_factor<Arith>(ws.lu.data(), n)) {
    const exact::LuLogdet r = exact::lu_logabsdet<Arith>(ws.lu.data(), n);
    if (r.trusted) return r.logdet;
  }
  ws.digits.resize(static_cast<size_t>(count));
  double logdet = 0.0;
  status = exact::exact_det(K, n, ws.shifts.data(), needed, primes.data(), count, ws.work.data(), ws.digits.data(),
                            &logdet);
  TORCH_CHECK(status == exact::kNonsingular, "logdet_score: internal error, exact status ", status,
              " for a matrix proven nonsingular");
  return logdet;
}

template <typename Arith, typename T>
void logdet_batch(const T* Kp, int64_t A, int64_t B, double* S) {
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(B);
    for (int64_t a = begin; a < end; ++a) S[a] = logdet_one<Arith>(Kp + a * B * B, B, ws);
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

}  // namespace

std::vector<int64_t> exact_primes(int64_t count) {
  static std::mutex mutex;
  static std::vector<int64_t> primes;  // grows, never shrinks: the same list for every caller
  static std::vector<int64_t> small;   // the primes up to sqrt(2^31), the sieve's divisors
  const std::lock_guard<std::mutex> lock(mutex);
  if (small.empty()) {
    constexpr int64_t kRoot = 46341;  // 46341^2 > 2^31
    std::vector<char> composite(kRoot + 1, 0);
    for (int64_t d = 2; d <= kRoot; ++d) {
      if (composite[d]) continue;
      small.push_back(d);
      for (int64_t m = d * d; m <= kRoot; m += d) composite[m] = 1;
    }
  }
  // Windows [lo, hi) below the last prime found, each sieved by the small primes and read
  // from the top: the list stays in decreasing order and its prefix never changes.
  while (static_cast<int64_t>(primes.size()) < count) {
    const int64_t hi = primes.empty() ? int64_t(1) << 31 : primes.back();
    const int64_t want = count - static_cast<int64_t>(primes.size());
    const int64_t width = std::min<int64_t>(int64_t(1) << 24, std::max<int64_t>(int64_t(1) << 12, 24 * want));
    const int64_t lo = std::max<int64_t>(hi - width, int64_t(1) << 30);  // ~50M primes above 2^30
    TORCH_CHECK(lo < hi, "exact_primes: more than the primes between 2^30 and 2^31 asked for (", count, ")");
    std::vector<char> composite(static_cast<size_t>(hi - lo), 0);
    for (const int64_t d : small) {
      for (int64_t m = (lo + d - 1) / d * d; m < hi; m += d) composite[m - lo] = 1;
    }
    for (int64_t v = hi - 1; v >= lo; --v) {
      if (!composite[v - lo]) primes.push_back(v);
    }
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
  std::vector<int> shifts(static_cast<size_t>(n));
  double needed = 0.0;
  const int status = exact::quick_status<Unfused>(K, n, shifts.data(), &needed);
  if (status != exact::kUndecided) return status;
  const std::vector<int64_t> primes = exact_primes(exact_primes_for_bits(needed));
  return exact::exact_det(K, n, shifts.data(), needed, primes.data(), static_cast<int64_t>(primes.size()), work,
                          nullptr, nullptr);
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
  const bool fused = fused_arithmetic();
  AT_DISPATCH_SWITCH(K.scalar_type(), "logdet_score_cpu", AT_DISPATCH_CASE(at::kLong, [&] {
                       if (fused) logdet_batch<exact::Fused>(K.const_data_ptr<scalar_t>(), A, B, S);
                       else logdet_batch<Unfused>(K.const_data_ptr<scalar_t>(), A, B, S);
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       if (fused) logdet_batch<exact::Fused>(K.const_data_ptr<scalar_t>(), A, B, S);
                       else logdet_batch<Unfused>(K.const_data_ptr<scalar_t>(), A, B, S);
                     }));
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
  const bool fused = fused_arithmetic();
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch;
    std::vector<double> K(static_cast<size_t>(B * B));
    Workspace ws(B);
    for (int64_t a = begin; a < end; ++a) {
      agreement_kernel<double>(cp + a * B * W, mp + a * W, up[a], B, W, scratch, K.data());
      S[a] = fused ? logdet_one<exact::Fused>(K.data(), B, ws) : logdet_one<Unfused>(K.data(), B, ws);
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
