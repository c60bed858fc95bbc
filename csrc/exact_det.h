// Exact facts about det K, shared by the CPU kernels (cpu/hook_logdet_cpu.cpp) and the CUDA
// kernels (cuda/hook_logdet_cuda.cu), so that logdet_score / hook_logdet_score take the same
// decisions on every backend and in every arithmetic: with and without fused multiply-add
// (the GPU fuses a * b + c into one rounding, the CPU build does not; issue 20). The
// pure-PyTorch fallback (nwot_fast/exact.py) implements the same rules.
//
// Decisions, none of which tests a rounded value against zero:
//   1. A non-finite entry: NaN (kNotFinite).
//   2. Singularity, decided exactly on the integer view of K: each row scaled by the power of
//      two 2^s_i that makes its entries integers (s_i = 0 for an int64 K and for rows of
//      integers; det scales by 2^sum(s_i), so it is zero exactly when det K is):
//      a. a zero row or two identical rows: singular;
//      b. the largest primes below 2^31 in decreasing order (2147483647, 2147483629, ...,
//         exact_primes); det mod p by Gaussian elimination in int64 (entries in [0, p),
//         products < 2^62); a nonzero residue proves det != 0: nonsingular, stop;
//      c. otherwise the next prime, until the primes used hold more than H + kMarginBits bits,
//         H = sum_i log2 ||row_i||_2 the Hadamard bound (|det| <= 2^H) in double, kMarginBits
//         = 1 (|det| < prod(p) / 2 for the CRT) + 9 (rounding of H). Zero modulo all of them
//         means det = 0: singular (-inf).
//   3. A nonsingular K gets log|det| from the float64 LU if that LU keeps the precision
//      contract by its own error bound (lu_logabsdet: a cancelled pivot, exactly zero in one
//      arithmetic and 7.4e-17 in the other, fails it in both); else log|det| exactly, from det
//      mod every prime of 2c and the Chinese remainder theorem (Garner's mixed radix:
//      exact_det). The two values differ by less than the contract, so the answer is the
//      same whichever side of the bound a rounding puts a matrix.
#pragma once

#include <float.h>
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

enum Status : int { kNonsingular = 0, kSingular = 1, kNotFinite = 2, kUndecided = 3 };

constexpr double kMarginBits = 10.0;
// Bits of an entry of the integer view: int64 K, and hook_logdet's K (integers below 2^53),
// below 2^63; any finite float64 below 2^2098 once its row is scaled (2^1024 / 2^-1074).
constexpr double kInt64EntryBits = 63.0;
constexpr double kFloat64EntryBits = 2098.0;
// Unit roundoff of float64, and the largest first-order error bound of the float64 LU's
// log|det| (relative to max(1, |log|det||)) that is accepted: 100x inside the float64
// contract of docs/PRECISION.md (1e-9), for what the bound leaves out (see lu_logabsdet).
constexpr double kUnitRoundoff = 1.1102230246251565e-16;
constexpr double kLuTolerance = 1e-11;

// Bits of prime product needed for an n x n matrix whose integer view has entries below
// 2^entry_bits, whatever they are (the size of the prime table the CUDA kernels get).
inline double max_bits_needed(int64_t n, double entry_bits) {
  return static_cast<double>(n) * (0.5 * std::log2(static_cast<double>(n > 0 ? n : 1)) + entry_bits) + kMarginBits;
}

// Multiply-add with one rounding. The CUDA kernels use it (nvcc contracts a * b + c into an
// FMA anyway); the CPU kernels select it with NWOT_CPU_ARITHMETIC=fused to run the GPU's
// arithmetic. The unfused policy (each product rounded) is CPU only (hook_logdet_cpu.cpp).
struct Fused {
  NWOT_HD static double madd(double a, double b, double c) { return fma(a, b, c); }
};

// --- modular arithmetic (exact) --------------------------------------------------------------

// a * b mod p for a, b in [0, p), p < 2^31: the quotient from double arithmetic (off by at
// most 1 since a * b < 2^62 and the relative error is ~2^-52; no add, so nothing to fuse),
// the remainder exact in int64.
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

NWOT_HD inline int64_t reduce(int64_t x, int64_t p) {
  const int64_t r = x % p;
  return r < 0 ? r + p : r;
}

// 2^k mod p, k >= 0 (square and multiply).
NWOT_HD inline int64_t pow2_mod(int64_t k, int64_t p, double inv_p) {
  int64_t result = 1, base = 2 % p;
  while (k > 0) {
    if (k & 1) result = mul_mod(result, base, p, inv_p);
    base = mul_mod(base, base, p, inv_p);
    k >>= 1;
  }
  return result;
}

NWOT_HD inline int trailing_zeros(uint64_t v) {
#ifdef __CUDA_ARCH__
  return __ffsll(static_cast<long long>(v)) - 1;
#else
  return __builtin_ctzll(v);
#endif
}

// x = m 2^e exactly, m odd (|m| < 2^53), for a finite nonzero double x.
NWOT_HD inline void odd_mantissa(double x, int64_t* m, int* e) {
  int ex = 0;
  const double f = frexp(x, &ex);  // x = f 2^ex, 0.5 <= |f| < 1: f 2^53 is an integer
  const int64_t v = static_cast<int64_t>(ldexp(f, 53));
  const int tz = trailing_zeros(static_cast<uint64_t>(v < 0 ? -v : v));
  *m = v / (int64_t(1) << tz);  // exact: the low tz bits are zero
  *e = ex - 53 + tz;
}

// --- the integer view of K -------------------------------------------------------------------

NWOT_HD inline bool is_finite_entry(int64_t) { return true; }
NWOT_HD inline bool is_finite_entry(double x) { return fabs(x) <= DBL_MAX; }  // false for NaN and inf

// s >= 0 such that x 2^s is an integer (0 for integers).
NWOT_HD inline int entry_shift(int64_t) { return 0; }
NWOT_HD inline int entry_shift(double x) {
  if (x == trunc(x)) return 0;  // an integer (or zero)
  int64_t m = 0;
  int e = 0;
  odd_mantissa(x, &m, &e);
  return e < 0 ? -e : 0;
}

// (x 2^shift) mod p in [0, p); x 2^shift is an integer by the choice of shift.
NWOT_HD inline int64_t entry_residue(int64_t x, int, int64_t p, double) { return reduce(x, p); }
NWOT_HD inline int64_t entry_residue(double x, int shift, int64_t p, double inv_p) {
  if (shift == 0 && fabs(x) < 9.2233720368547758e18) {
    const int64_t v = static_cast<int64_t>(x);
    if (static_cast<double>(v) == x) return reduce(v, p);  // an integer entry (hook_logdet's K)
  }
  if (x == 0.0) return 0;
  int64_t m = 0;
  int e = 0;
  odd_mantissa(x, &m, &e);
  return mul_mod(reduce(m, p), pow2_mod(e + shift, p, inv_p), p, inv_p);
}

// log2 ||row 2^shift||_2 (-inf for a zero row). Squares summed as they are when that neither
// overflows nor loses the sum to underflow (every integer K), else after scaling by the
// largest binary exponent.
template <typename Arith, typename T>
NWOT_HD double row_bits(const T* row, int64_t n, int shift) {
  double squares = 0.0;
  bool zero = true;
  for (int64_t j = 0; j < n; ++j) {
    const double y = static_cast<double>(row[j]);
    zero = zero && y == 0.0;
    squares = Arith::madd(y, y, squares);
  }
  if (zero) return -INFINITY;
  if (squares >= 0x1p-900 && squares <= 0x1p900) return static_cast<double>(shift) + 0.5 * log2(squares);
  int top = -100000;
  for (int64_t j = 0; j < n; ++j) {
    int e = 0;
    if (row[j] != 0) frexp(static_cast<double>(row[j]), &e);
    top = row[j] != 0 && e > top ? e : top;
  }
  squares = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double y = ldexp(static_cast<double>(row[j]), -top);
    squares = Arith::madd(y, y, squares);
  }
  return static_cast<double>(shift + top) + 0.5 * log2(squares);
}

// --- single-threaded decision and exact log|det| (the CPU kernels, and the CUDA fallback) ---

// 1. and 2a. for the row-major n x n K: kNotFinite, kSingular, or kUndecided with the row
// shifts (shifts[n]) and the bits the primes must exceed (*needed).
template <typename Arith, typename T>
NWOT_HD int quick_status(const T* K, int64_t n, int* shifts, double* needed) {
  for (int64_t k = 0; k < n * n; ++k) {
    if (!is_finite_entry(K[k])) return kNotFinite;
  }
  double hadamard_bits = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = K + i * n;
    int shift = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int s = entry_shift(row[j]);
      shift = s > shift ? s : shift;
    }
    shifts[i] = shift;
    const double bits = row_bits<Arith>(row, n, shift);
    if (bits == -INFINITY) return kSingular;  // a zero row
    hadamard_bits += bits;
    for (int64_t r = 0; r < i; ++r) {
      bool same = true;
      for (int64_t j = 0; j < n && same; ++j) same = row[j] == K[r * n + j];
      if (same) return kSingular;
    }
  }
  *needed = hadamard_bits + kMarginBits;
  return kUndecided;
}

// det mod p in [0, p) of the row-major n x n residues `work` (overwritten), by Gaussian
// elimination with the first nonzero entry as pivot; the sign follows the row swaps.
NWOT_HD inline int64_t det_mod(int64_t* work, int64_t n, int64_t p, double inv_p) {
  int64_t det = 1;
  for (int64_t k = 0; k < n; ++k) {
    int64_t piv = k;
    while (piv < n && work[piv * n + k] == 0) ++piv;
    if (piv == n) return 0;
    if (piv != k) {
      for (int64_t j = k; j < n; ++j) {
        const int64_t t = work[k * n + j];
        work[k * n + j] = work[piv * n + j];
        work[piv * n + j] = t;
      }
      det = p - det;  // det is in [1, p): a product of nonzero residues
    }
    det = mul_mod(det, work[k * n + k], p, inv_p);
    const int64_t inv = inv_mod(work[k * n + k], p);
    const int64_t* pivot_row = work + k * n;
    for (int64_t i = k + 1; i < n; ++i) {
      int64_t* row = work + i * n;
      if (row[k] == 0) continue;
      const int64_t f = p - mul_mod(row[k], inv, p, inv_p);  // -row[k] / pivot
      for (int64_t j = k + 1; j < n; ++j) {
        const int64_t v = row[j] + mul_mod(f, pivot_row[j], p, inv_p);
        row[j] = v >= p ? v - p : v;
      }
    }
  }
  return det;
}

// log |sum_i digits[i] prod_{l<i} primes[l]| of the mixed-radix digits of |det| (count of
// them, not all zero): the top three digits carry all that a double holds.
NWOT_HD inline double mixed_radix_log(const int64_t* digits, const int64_t* primes, int64_t count) {
  int64_t top = count - 1;
  while (top > 0 && digits[top] == 0) --top;
  double value = static_cast<double>(digits[top]), scale = 1.0;
  for (int64_t i = top - 1; i >= 0 && i >= top - 2; --i) {
    scale /= static_cast<double>(primes[i]);
    value += static_cast<double>(digits[i]) * scale;
  }
  double logdet = log(value);
  for (int64_t i = 0; i < top; ++i) logdet += log(static_cast<double>(primes[i]));
  return logdet;
}

// 2b-c and 3. on the integer view of K (shifts and needed from quick_status): kNonsingular or
// kSingular, or kUndecided if the primes given hold too few bits (the callers size the table
// so that this cannot happen). With digits (prime_count of them) and logabsdet: a nonsingular
// K's log|det K| exactly up to the final logarithms, from det mod every prime up to `needed`
// bits; without: stops at the first nonzero residue. work holds n * n int64.
template <typename T>
NWOT_HD int exact_det(const T* K, int64_t n, const int* shifts, double needed, const int64_t* primes,
                      int64_t prime_count, int64_t* work, int64_t* digits, double* logabsdet) {
  double bits = 0.0;
  bool nonzero = false;
  int64_t q = 0;
  for (; q < prime_count && bits <= needed; ++q) {
    const int64_t p = primes[q];
    const double inv_p = 1.0 / static_cast<double>(p);
    for (int64_t k = 0; k < n * n; ++k) work[k] = entry_residue(K[k], shifts[k / n], p, inv_p);
    const int64_t r = det_mod(work, n, p, inv_p);
    nonzero = nonzero || r != 0;
    if (digits == nullptr) {
      if (nonzero) return kNonsingular;
    } else {
      // Garner: digit q = (r - (the value of digits 0..q-1) mod p) / prod_{l<q} p_l mod p.
      int64_t value = 0, radix = 1;
      for (int64_t j = q - 1; j >= 0; --j) value = (mul_mod(value, primes[j] % p, p, inv_p) + digits[j] % p) % p;
      for (int64_t j = 0; j < q; ++j) radix = mul_mod(radix, primes[j] % p, p, inv_p);
      digits[q] = mul_mod(reduce(r - value, p), inv_mod(radix, p), p, inv_p);
    }
    bits += log2(static_cast<double>(p));
  }
  if (bits <= needed) return kUndecided;
  if (!nonzero) return kSingular;
  if (digits != nullptr) {
    // The digits give X in [0, P); det = X - P when X > (P - 1) / 2, whose digits are
    // (p_i - 1) / 2 (all p_i odd). Then |det| = P - X = (P - 1 - X) + 1, digit by digit.
    int64_t i = q - 1;
    while (i >= 0 && digits[i] == (primes[i] - 1) / 2) --i;
    if (i >= 0 && digits[i] > (primes[i] - 1) / 2) {
      int64_t carry = 1;
      for (int64_t j = 0; j < q; ++j) {
        int64_t d = primes[j] - 1 - digits[j] + carry;
        carry = d == primes[j] ? 1 : 0;
        digits[j] = carry ? 0 : d;
      }
    }
    double scaled = 0.0;
    for (int64_t r = 0; r < n; ++r) scaled += static_cast<double>(shifts[r]);
    *logabsdet = mixed_radix_log(digits, primes, q) - scaled * 0.69314718055994530942;
  }
  return kNonsingular;
}

// --- the float64 LU and its error bound -------------------------------------------------------

struct LuLogdet {
  double logdet;
  bool trusted;
};

// log|det| = sum_k log|u_kk| from LU factors with partial pivoting (L unit lower, U upper) in
// one n x n buffer, row-major (the CPU LU of K) or column-major (cuBLAS getrf of K^T): the
// formula below reads the same in both. `trusted` says whether it keeps the contract.
//
// The computed factors are exact for PA + E with |E| <= gamma_n |L||U| (Higham, Accuracy and
// Stability, Thm 9.3; it holds with fused and unfused multiply-add, and for any order of the
// updates, blocked or not: an FMA only drops a rounding). E_kk alone moves u_kk by up to
// gamma_n m_k, m_k = (|L||U|)_kk, so log|u_kk| by gamma_n m_k / |u_kk|: large exactly when the
// pivot came out of cancellation (m_k >> |u_kk|). The LU is trusted when the sum of these
// first-order bounds is within kLuTolerance of max(1, |log|det||); what the bound leaves out
// (E off the diagonal, carried through later pivots) is what the 100x margin is for. A zero
// pivot (info > 0 on the GPU), a NaN or an infinite one is never trusted.
template <typename Arith>
NWOT_HD LuLogdet lu_logabsdet(const double* lu, int64_t n) {
  double logdet = 0.0, amplification = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    const double u = fabs(lu[k * n + k]);
    if (!(u > 0.0 && u <= DBL_MAX)) return {NAN, false};
    double m = u;
    for (int64_t j = 0; j < k; ++j) m = Arith::madd(fabs(lu[k * n + j]), fabs(lu[j * n + k]), m);
    logdet += log(u);
    amplification += m / u;
  }
  const double bound = static_cast<double>(n + 1) * kUnitRoundoff * amplification;
  return {logdet, bound <= kLuTolerance * fmax(1.0, fabs(logdet))};
}

}  // namespace exact

// --- host side -----------------------------------------------------------------------------

// The first `count` primes below 2^31 in decreasing order (a segmented sieve; the list is kept
// and extended on demand, thread-safe). Defined in cpu/hook_logdet_cpu.cpp.
std::vector<int64_t> exact_primes(int64_t count);

// How many of those primes hold more than `bits` bits (log2 of their product).
int64_t exact_primes_for_bits(double bits);

// Status (exact::kNonsingular / kSingular / kNotFinite) of the row-major n x n matrix K.
// `work` must hold n * n int64. Defined in cpu/hook_logdet_cpu.cpp for int64_t and double.
template <typename T>
int exact_singularity(const T* K, int64_t n, int64_t* work);

}  // namespace nwot_fast
