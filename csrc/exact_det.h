// Exact singularity of integer matrices, shared by the CPU kernels (cpu/hook_logdet_cpu.cpp)
// and the CUDA kernels (cuda/hook_logdet_cuda.cu), so that logdet_score / hook_logdet_score
// return -inf for exactly the singular K on every backend (issue 9). The pure-PyTorch fallback
// (nwot_fast/ops.py) implements the same algorithm:
//
//   1. A zero row or two identical rows: singular.
//   2. Primes: the largest primes below 2^31 in decreasing order (2147483647, 2147483629, ...),
//      found by trial division (exact_primes).
//   3. det K mod p by Gaussian elimination in int64 (entries in [0, p), products < 2^62).
//      A nonzero residue proves det K != 0: nonsingular, stop.
//   4. Otherwise the next prime, until the primes used hold more than H + kMarginBits bits,
//      H = sum_i 0.5 log2(sum_j K_ij^2) the Hadamard bound (|det K| <= 2^H) computed in
//      double, kMarginBits = 2 (|det| < prod(p) / 2 for the CRT) + 8 (rounding of H). det K
//      = 0 modulo all of them means det K = 0: singular.
//
// The decision is for integer matrices (|K_ij| < 2^63): every int64 K, and a float64 K whose
// entries are all integers. A float64 K with a non-integer entry is reported as kNotInteger and
// the caller keeps the floating rule (-inf at an exactly zero LU pivot).
//
// A K proven nonsingular can still meet an exactly zero pivot in the float64 LU (cancellation:
// [[3, 2^53 - 1], [1, 3002399751580330]] has det -1 and float64 LU pivots 3, 0). The callers
// then redo the LU in double-double arithmetic (logabsdet_double_double, ~106-bit mantissa) and
// raise (CPU) or return NaN (CUDA, which cannot raise without synchronising) if even that meets
// a zero pivot; the comments at the call sites say which.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define NWOT_HD __host__ __device__
#else
#define NWOT_HD
#endif

namespace nwot_fast {
namespace exact {

enum Status : int { kNonsingular = 0, kSingular = 1, kNotInteger = 2 };

constexpr double kMarginBits = 10.0;

// Bits of prime product needed for an n x n integer matrix with |K_ij| < 2^63, whatever its
// entries (the size of the prime table the CUDA kernel gets).
inline double max_bits_needed(int64_t n) {
  return static_cast<double>(n) * (0.5 * std::log2(static_cast<double>(n > 0 ? n : 1)) + 63.0) + kMarginBits;
}

// a * b mod p for a, b in [0, p), p < 2^31: the quotient from double arithmetic (off by at
// most 1 since a * b < 2^62 and the relative error is ~2^-52), the remainder exact in int64.
NWOT_HD inline int64_t mul_mod(int64_t a, int64_t b, int64_t p, double inv_p) {
  const int64_t q = static_cast<int64_t>(static_cast<double>(a) * static_cast<double>(b) * inv_p);
  int64_t r = a * b - q * p;
  while (r < 0) r += p;
  while (r >= p) r -= p;
  return r;
}

// Inverse of a in [1, p) modulo the prime p (extended Euclid).
NWOT_HD inline int64_t inv_mod(int64_t a, int64_t p) {
  int64_t r0 = p, r1 = a, t0 = 0, t1 = 1;
  while (r1 != 0) {
    const int64_t q = r0 / r1;
    const int64_t r2 = r0 - q * r1, t2 = t0 - q * t1;
    r0 = r1;
    r1 = r2;
    t0 = t1;
    t1 = t2;
  }
  return t0 < 0 ? t0 + p : t0;
}

// x mod p in [0, p) of an integer-valued entry (int64, or double holding an integer < 2^63).
NWOT_HD inline int64_t reduce(int64_t x, int64_t p) {
  const int64_t r = x % p;
  return r < 0 ? r + p : r;
}
NWOT_HD inline int64_t reduce(double x, int64_t p) { return reduce(static_cast<int64_t>(x), p); }

NWOT_HD inline bool is_integer_entry(int64_t) { return true; }
NWOT_HD inline bool is_integer_entry(double x) {
  return x == x && fabs(x) < 9.2233720368547758e18 && x == static_cast<double>(static_cast<int64_t>(x));
}

// --- double-double LU: the fallback for a proven nonsingular K whose float64 LU met a zero
// pivot. A value is hi + lo with |lo| <= ulp(hi) / 2 (Dekker / Knuth error-free transforms).
struct DD {
  double hi, lo;
};
NWOT_HD inline DD dd_two_sum(double a, double b) {
  const double s = a + b, bb = s - a;
  return {s, (a - (s - bb)) + (b - bb)};
}
NWOT_HD inline DD dd_add(DD a, DD b) {
  DD s = dd_two_sum(a.hi, b.hi);
  const DD t = dd_two_sum(a.lo, b.lo);
  s.lo += t.hi;
  s = dd_two_sum(s.hi, s.lo);
  s.lo += t.lo;
  return dd_two_sum(s.hi, s.lo);
}
NWOT_HD inline DD dd_neg(DD a) { return {-a.hi, -a.lo}; }
NWOT_HD inline DD dd_mul(DD a, DD b) {
  const double p = a.hi * b.hi;
  const double e = fma(a.hi, b.hi, -p);
  return dd_two_sum(p, e + (a.hi * b.lo + a.lo * b.hi));
}
NWOT_HD inline DD dd_div(DD a, DD b) {
  const double q1 = a.hi / b.hi;
  const DD r = dd_add(a, dd_neg(dd_mul(b, {q1, 0.0})));
  const double q2 = r.hi / b.hi;
  return dd_two_sum(q1, q2);
}

// log|det| of the row-major n x n matrix given as hi (the float64 entries; an integer K is
// exact there) and lo (zeros), both overwritten: LU with partial pivoting in double-double.
// Returns -inf if a pivot is exactly zero even at this precision.
NWOT_HD inline double logabsdet_double_double(double* hi, double* lo, int64_t n) {
  double logdet = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    int64_t piv = k;
    double best = fabs(hi[k * n + k]);
    for (int64_t i = k + 1; i < n; ++i) {
      const double v = fabs(hi[i * n + k]);
      if (v > best) {
        best = v;
        piv = i;
      }
    }
    if (best == 0.0) return -INFINITY;
    if (piv != k) {
      for (int64_t j = k; j < n; ++j) {
        const double h = hi[k * n + j], l = lo[k * n + j];
        hi[k * n + j] = hi[piv * n + j];
        lo[k * n + j] = lo[piv * n + j];
        hi[piv * n + j] = h;
        lo[piv * n + j] = l;
      }
    }
    const DD pivot = {hi[k * n + k], lo[k * n + k]};
    logdet += log(fabs(pivot.hi + pivot.lo));
    for (int64_t i = k + 1; i < n; ++i) {
      const DD f = dd_div({hi[i * n + k], lo[i * n + k]}, pivot);
      if (f.hi == 0.0) continue;
      for (int64_t j = k + 1; j < n; ++j) {
        const DD v = dd_add({hi[i * n + j], lo[i * n + j]}, dd_neg(dd_mul(f, {hi[k * n + j], lo[k * n + j]})));
        hi[i * n + j] = v.hi;
        lo[i * n + j] = v.lo;
      }
    }
  }
  return logdet;
}

}  // namespace exact

// --- host side -----------------------------------------------------------------------------

// The first `count` primes below 2^31 in decreasing order (trial division; the list is kept
// and extended on demand, thread-safe). Defined in cpu/hook_logdet_cpu.cpp.
std::vector<int64_t> exact_primes(int64_t count);

// How many of those primes hold more than `bits` bits (log2 of their product).
int64_t exact_primes_for_bits(double bits);

// Status (exact::kNonsingular / kSingular / kNotInteger) of the row-major n x n matrix K.
// `work` must hold n * n int64. Defined in cpu/hook_logdet_cpu.cpp for int64_t and double.
template <typename T>
int exact_singularity(const T* K, int64_t n, int64_t* work);

}  // namespace nwot_fast
