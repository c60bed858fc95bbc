// hook_logdet on the CPU: the Hamming-agreement kernel K by popcount (exact integers) and
// log|det K| by LU with partial pivoting in float64, separately or fused.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../nwot.h"

namespace nwot_fast {
namespace {

// Words per tile: B rows x kTileWords x 8 bytes stays in L2 for B <= 256, so each row tile
// is read from memory once per block of i rows instead of once per (i, j) pair.
constexpr int64_t kTileWords = 256;
constexpr int64_t kRowBlock = 16;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NWOT_POPCNT_TARGET __attribute__((target("popcnt")))
#else
#define NWOT_POPCNT_TARGET
#endif

// Adds sum_w m[w] * popcount(c_i[w] ^ c_j[w]) for i in [i0, i1), j in [i, B) over all words
// into disagree[(i - i0) * B + j].
NWOT_POPCNT_TARGET void disagreements(const int64_t* codes, const int64_t* mult, int64_t B, int64_t W, int64_t i0,
                                      int64_t i1, int64_t* disagree) {
  for (int64_t w0 = 0; w0 < W; w0 += kTileWords) {
    const int64_t w1 = std::min(W, w0 + kTileWords);
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t* ci = reinterpret_cast<const uint64_t*>(codes + i * W);
      int64_t* acc = disagree + (i - i0) * B;
      for (int64_t j = i; j < B; ++j) {
        const uint64_t* cj = reinterpret_cast<const uint64_t*>(codes + j * W);
        int64_t sum = 0;
        for (int64_t w = w0; w < w1; ++w) sum += mult[w] * __builtin_popcountll(ci[w] ^ cj[w]);
        acc[j] += sum;
      }
    }
  }
}

// K for one architecture into the row-major [B, B] buffer K (int64_t or double).
template <typename out_t>
void agreement_kernel(const int64_t* codes, const int64_t* mult, int64_t units, int64_t B, int64_t W,
                      std::vector<int64_t>& scratch, out_t* K) {
  for (int64_t i0 = 0; i0 < B; i0 += kRowBlock) {
    const int64_t i1 = std::min(B, i0 + kRowBlock);
    scratch.assign(static_cast<size_t>((i1 - i0) * B), 0);
    disagreements(codes, mult, B, W, i0, i1, scratch.data());
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = i; j < B; ++j) {
        const out_t v = static_cast<out_t>(units - scratch[(i - i0) * B + j]);
        K[i * B + j] = v;
        K[j * B + i] = v;
      }
    }
  }
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

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

}  // namespace

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
                     AT_DISPATCH_CASE(at::kLong, [&] {
                       const scalar_t* Kp = K.const_data_ptr<scalar_t>();
                       at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
                         std::vector<double> lu(static_cast<size_t>(B * B));
                         for (int64_t a = begin; a < end; ++a) {
                           std::copy(Kp + a * B * B, Kp + (a + 1) * B * B, lu.begin());
                           S[a] = logabsdet_lu(lu.data(), B);
                         }
                       });
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       const scalar_t* Kp = K.const_data_ptr<scalar_t>();
                       at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
                         std::vector<double> lu(static_cast<size_t>(B * B));
                         for (int64_t a = begin; a < end; ++a) {
                           std::copy(Kp + a * B * B, Kp + (a + 1) * B * B, lu.begin());
                           S[a] = logabsdet_lu(lu.data(), B);
                         }
                       });
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
  at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch;
    std::vector<double> K(static_cast<size_t>(B * B));
    for (int64_t a = begin; a < end; ++a) {
      if (B == 0) {
        S[a] = 0.0;  // det of the empty matrix is 1
        continue;
      }
      agreement_kernel<double>(cp + a * B * W, mp + a * W, up[a], B, W, scratch, K.data());
      S[a] = logabsdet_lu(K.data(), B);
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
