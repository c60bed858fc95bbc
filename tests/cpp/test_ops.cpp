// C++ tests of the nwot_fast operators built by CMakeLists.txt (run by ctest): each operator,
// called through the dispatcher as Python does, against a naive C++ implementation written
// independently here (pairwise correlation, cyclic Jacobi eigenvalues, bit-by-bit counts).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "exact_det.h"
#include "nwot.h"

namespace {

int failures = 0;

#define EXPECT(cond, what)                                                   \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, what); \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

bool close(double got, double want, double rtol) { return std::fabs(got - want) <= rtol * std::fabs(want); }

using Matrix = std::vector<std::vector<double>>;

// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations.
std::vector<double> jacobi_eigenvalues(Matrix a) {
  const size_t n = a.size();
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (size_t p = 0; p < n; ++p)
      for (size_t q = p + 1; q < n; ++q) off += a[p][q] * a[p][q];
    if (off < 1e-30) break;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) {
        if (std::fabs(a[p][q]) < 1e-300) continue;
        const double theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (size_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k][p], akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (size_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p][k], aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
      }
    }
  }
  std::vector<double> eig(n);
  for (size_t k = 0; k < n; ++k) eig[k] = a[k][k];
  return eig;
}

double naive_jacob_cov(const at::Tensor& J) {  // J [B, D] float64
  const int64_t B = J.size(0), D = J.size(1);
  auto j = J.accessor<double, 2>();
  std::vector<double> mean(B, 0.0), sd(B, 0.0);
  for (int64_t i = 0; i < B; ++i) {
    bool all_equal = true;  // the documented rule: a zero-variance row makes the score NaN
    for (int64_t k = 1; k < D; ++k) all_equal = all_equal && j[i][k] == j[i][0];
    if (all_equal) return std::numeric_limits<double>::quiet_NaN();
    for (int64_t k = 0; k < D; ++k) mean[i] += j[i][k] / D;
    for (int64_t k = 0; k < D; ++k) sd[i] += (j[i][k] - mean[i]) * (j[i][k] - mean[i]);
    sd[i] = std::sqrt(sd[i]);
  }
  Matrix c(B, std::vector<double>(B));
  for (int64_t p = 0; p < B; ++p)
    for (int64_t q = 0; q < B; ++q) {
      double s = 0.0;
      for (int64_t k = 0; k < D; ++k) s += (j[p][k] - mean[p]) * (j[q][k] - mean[q]);
      c[p][q] = s / (sd[p] * sd[q]);
    }
  double score = 0.0;
  for (double l : jacobi_eigenvalues(c)) score -= std::log(l + 1e-5) + 1.0 / (l + 1e-5);
  return score;
}

at::Tensor call1(const char* op, const at::Tensor& a) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(op, "").typed<at::Tensor(const at::Tensor&)>().call(a);
}

at::Tensor call3(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(op, "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>()
      .call(a, b, c);
}

void test_jacob_cov() {
  at::manual_seed(1);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    at::Tensor J = at::randn({4, 12, 50}, at::TensorOptions().dtype(at::kDouble)) + at::randn({4, 1, 50}, at::kDouble);
    J = J.to(dtype);
    J[2][5].fill_(0.75);  // zero-variance row: NaN for architecture 2 only
    at::Tensor S = call1("nwot_fast::jacob_cov_score", J);
    EXPECT(S.scalar_type() == at::kDouble && S.size(0) == 4, "jacob_cov_score returns float64 [A]");
    for (int64_t a = 0; a < 4; ++a) {
      const double want = naive_jacob_cov(J[a].to(at::kDouble));
      const double got = S[a].item<double>();
      if (a == 2) {
        EXPECT(std::isnan(got), "zero-variance row gives NaN (operator)");
        EXPECT(std::isnan(want), "zero-variance row gives NaN (naive)");
      } else {
        EXPECT(close(got, want, 1e-9), ("jacob_cov_score matches the naive score, arch " + std::to_string(a)).c_str());
      }
    }
  }
}

void test_pack_and_hamming() {
  at::manual_seed(2);
  const int64_t A = 3, B = 9;
  const std::vector<std::vector<int64_t>> layer_units = {{70, 5}, {64, 130}, {1, 200}};
  const std::vector<std::vector<int64_t>> layer_mult = {{2, 1}, {1, 3}, {2, 2}};
  std::vector<at::Tensor> codes, mults;
  std::vector<int64_t> units;
  std::vector<std::vector<at::Tensor>> bits(A);
  for (int64_t a = 0; a < A; ++a) {
    std::vector<at::Tensor> words, weights;
    int64_t total = 0;
    for (size_t h = 0; h < layer_units[a].size(); ++h) {
      at::Tensor x = at::randn({B, layer_units[a][h]});
      at::Tensor c = call1("nwot_fast::pack_codes", x);
      const int64_t W = (layer_units[a][h] + 63) / 64;
      EXPECT(c.size(0) == B && c.size(1) == W, "pack_codes shape [B, ceil(units / 64)]");
      auto cw = c.accessor<int64_t, 2>();
      auto xv = x.accessor<float, 2>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t u = 0; u < W * 64; ++u) {
          const bool bit = (static_cast<uint64_t>(cw[b][u / 64]) >> (u % 64)) & 1u;
          const bool want = u < layer_units[a][h] && xv[b][u] > 0.0f;
          if (bit != want) {
            EXPECT(false, "pack_codes bit");
            return;
          }
        }
      words.push_back(c);
      weights.push_back(at::full({W}, layer_mult[a][h], at::kLong));
      total += layer_mult[a][h] * layer_units[a][h];
      bits[a].push_back(x > 0);
    }
    codes.push_back(at::cat(words, 1));
    mults.push_back(at::cat(weights));
    units.push_back(total);
  }
  int64_t W = 0;
  for (auto& c : codes) W = std::max(W, c.size(1));
  for (int64_t a = 0; a < A; ++a) {  // pad to a common W with zero words of multiplicity 0
    codes[a] = at::constant_pad_nd(codes[a], {0, W - codes[a].size(1)});
    mults[a] = at::constant_pad_nd(mults[a], {0, W - mults[a].size(0)});
  }
  at::Tensor C = at::stack(codes), M = at::stack(mults), U = at::tensor(units, at::kLong);
  at::Tensor K = call3("nwot_fast::hamming_kernel", C, M, U);
  auto k = K.accessor<int64_t, 3>();
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < B; ++j) {
        int64_t agree = 0;
        for (size_t h = 0; h < bits[a].size(); ++h) {
          auto bv = bits[a][h].accessor<bool, 2>();
          for (int64_t u = 0; u < bits[a][h].size(1); ++u) agree += layer_mult[a][h] * (bv[i][u] == bv[j][u]);
        }
        if (k[a][i][j] != agree) {
          EXPECT(false, "hamming_kernel equals the naive agreement count");
          return;
        }
      }
  }
  // logdet of the symmetric K: the sum of log|eigenvalues| (an independent algorithm).
  at::Tensor fused = call3("nwot_fast::hook_logdet_score", C, M, U);
  at::Tensor S = call1("nwot_fast::logdet_score", K);
  for (int64_t a = 0; a < A; ++a) {
    Matrix m(B, std::vector<double>(B));
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < B; ++j) m[i][j] = static_cast<double>(k[a][i][j]);
    double want = 0.0;
    for (double l : jacobi_eigenvalues(m)) want += std::log(std::fabs(l));
    EXPECT(close(S[a].item<double>(), want, 1e-9), "logdet_score matches the eigenvalue log-determinant");
    EXPECT(S[a].item<double>() == fused[a].item<double>(), "hook_logdet_score equals logdet_score(hamming_kernel)");
  }
  // Every ReLU sees zeros: K = units * ones, singular: -inf for that architecture only.
  at::Tensor Z = C.clone();
  Z[1].zero_();
  at::Tensor SZ = call3("nwot_fast::hook_logdet_score", Z, M, U);
  EXPECT(std::isinf(SZ[1].item<double>()) && SZ[1].item<double>() < 0, "all-zero codes give -inf");
  EXPECT(SZ[0].item<double>() == fused[0].item<double>() && SZ[2].item<double>() == fused[2].item<double>(),
         "the other architectures are unaffected");
}

// Exact singularity (exact_det.h): an exact determinant by fraction-free Bareiss elimination in
// __int128 (the matrices here are small) is the independent oracle.
__int128 bareiss_det(std::vector<std::vector<__int128>> m) {
  const size_t n = m.size();
  __int128 sign = 1, prev = 1;
  for (size_t k = 0; k + 1 < n; ++k) {
    if (m[k][k] == 0) {
      size_t s = k + 1;
      while (s < n && m[s][k] == 0) ++s;
      if (s == n) return 0;
      std::swap(m[k], m[s]);
      sign = -sign;
    }
    for (size_t i = k + 1; i < n; ++i)
      for (size_t j = k + 1; j < n; ++j) m[i][j] = (m[i][j] * m[k][k] - m[i][k] * m[k][j]) / prev;
    prev = m[k][k];
  }
  return n == 0 ? 1 : sign * m[n - 1][n - 1];
}

void test_exact_singularity() {
  const int64_t p = 2147483647;
  const std::vector<std::vector<std::vector<int64_t>>> mats = {
      {{2, 1, 3}, {2, 1, 3}, {0, 5, 1}},                 // identical rows (MKL slogdet: -34.03)
      {{1, 2, 3, 4}, {5, 6, 7, 9}, {6, 8, 10, 13}, {1, 0, 0, 1}},  // row 2 = row 0 + row 1
      {{p, 1, 0}, {0, 1, 0}, {3, 0, 1}},                 // det = p: zero modulo the first prime
      {{p, 0}, {0, 2147483629}},                         // det zero modulo the first two primes
      {{3, (int64_t(1) << 53) - 1}, {1, 3002399751580330}},  // det -1, float64 LU pivot exactly 0
      {{4, 1, 7}, {2, 9, 1}, {8, 3, 5}},
  };
  for (size_t m = 0; m < mats.size(); ++m) {
    const int64_t n = static_cast<int64_t>(mats[m].size());
    std::vector<std::vector<__int128>> wide(n, std::vector<__int128>(n));
    at::Tensor K = at::empty({1, n, n}, at::kLong);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        wide[i][j] = mats[m][i][j];
        K[0][i][j] = mats[m][i][j];
      }
    const __int128 det = bareiss_det(wide);
    std::vector<int64_t> work(n * n);
    const int status = nwot_fast::exact_singularity(K.data_ptr<int64_t>(), n, work.data());
    EXPECT(status == (det == 0 ? nwot_fast::exact::kSingular : nwot_fast::exact::kNonsingular),
           ("exact_singularity agrees with the exact determinant, matrix " + std::to_string(m)).c_str());
    for (auto dtype : {at::kLong, at::kDouble}) {
      const double got = call1("nwot_fast::logdet_score", K.to(dtype))[0].item<double>();
      const double want = det == 0 ? -std::numeric_limits<double>::infinity()
                                   : std::log(std::fabs(static_cast<double>(det)));
      EXPECT(det == 0 ? got == want : close(got, want, 1e-9) || std::fabs(got - want) < 1e-12,
             ("logdet_score is -inf exactly for det == 0, matrix " + std::to_string(m)).c_str());
    }
  }
  // The primes: the largest below 2^31, decreasing.
  const std::vector<int64_t> primes = nwot_fast::exact_primes(3);
  EXPECT(primes[0] == 2147483647 && primes[1] == 2147483629 && primes[2] == 2147483587, "exact_primes");
}

void test_errors() {
  bool thrown = false;
  try {
    call1("nwot_fast::jacob_cov_score", at::zeros({3, 4}));
  } catch (const c10::Error& e) {
    thrown = std::string(e.what()).find("J must be 3-D [archs, batch, features], got 2-D") != std::string::npos;
  }
  EXPECT(thrown, "a 2-D J raises an error naming J");
  thrown = false;
  try {
    call3("nwot_fast::hamming_kernel", at::zeros({2, 3, 4}, at::kLong), at::zeros({2, 5}, at::kLong),
          at::zeros({2}, at::kLong));
  } catch (const c10::Error& e) {
    thrown = std::string(e.what()).find("multiplicity must have shape [archs, words] = [2, 4]") != std::string::npos;
  }
  EXPECT(thrown, "a mis-shaped multiplicity raises an error naming it");
  const std::string info = nwot_fast::build_info();
  EXPECT(info.find("backends=cpu") != std::string::npos && info.find("torch=") == 0, "build_info");
}

}  // namespace

int main() {
  test_jacob_cov();
  test_pack_and_hamming();
  test_exact_singularity();
  test_errors();
  if (failures == 0) std::printf("nwot_fast C++ operator tests: all passed (%s)\n", nwot_fast::build_info().c_str());
  return failures == 0 ? 0 : 1;
}
