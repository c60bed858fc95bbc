// jacob_cov_score on the CPU: one architecture per task (at::parallel_for over A), each task
// with its own float64 workspace; Gram by BLAS (at::mm_out), eigenvalues by LAPACK syevd.
#include <ATen/Parallel.h>
#include <ATen/native/BatchLinearAlgebra.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../nwot.h"

// MKL's per-thread thread count, when torch's BLAS/LAPACK is MKL (weak: absent otherwise).
// This is the C entry point (mkl_service.h maps mkl_set_num_threads_local to it); the
// lower-case symbol exported by MKL is the Fortran one, which takes a pointer.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace nwot_fast {
namespace {

// Runs LAPACK single-threaded in this scope. A B x B syevd has thousands of small parallel
// steps; with MKL's threads on a busy 2-core machine each barrier costs a scheduler time slice
// (measured: 6 s instead of 0.03 s for B = 256). Parallelism comes from at::parallel_for over
// the architectures instead.
struct SequentialLapack {
  int previous = 0;
  SequentialLapack() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialLapack() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

// Centres and normalises the B rows of one J[a] into X (float64, row-major [B, D]) so that
// X X^T is the correlation matrix. Returns false when some row has zero variance (all its
// entries equal) or holds a NaN or infinite entry: the correlation is undefined and the caller
// reports NaN (the CUDA kernel has the same rule).
template <typename scalar_t>
bool normalised_rows(const scalar_t* J, int64_t B, int64_t D, double* X) {
  for (int64_t i = 0; i < B; ++i) {
    const scalar_t* row = J + i * D;
    double* out = X + i * D;
    scalar_t lo = row[0], hi = row[0];
    double sum = 0.0;
    bool finite = true;
    for (int64_t k = 0; k < D; ++k) {
      lo = std::min(lo, row[k]);
      hi = std::max(hi, row[k]);
      finite = finite && std::isfinite(static_cast<double>(row[k]));
      sum += static_cast<double>(row[k]);
    }
    if (lo == hi || !finite) return false;
    const double mean = sum / static_cast<double>(D);
    double squares = 0.0;
    for (int64_t k = 0; k < D; ++k) {
      const double c = static_cast<double>(row[k]) - mean;
      out[k] = c;
      squares += c * c;
    }
    const double inv_norm = 1.0 / std::sqrt(squares);
    for (int64_t k = 0; k < D; ++k) out[k] *= inv_norm;
  }
  return true;
}

}  // namespace

at::Tensor jacob_cov_score_cpu(const at::Tensor& J_in) {
  check_jacobian(J_in);
  TORCH_CHECK(J_in.device().is_cpu(), "J must be a CPU tensor for the CPU kernel, got ", J_in.device());
  const at::Tensor J = J_in.contiguous();
  const int64_t A = J.size(0), B = J.size(1), D = J.size(2);
  at::Tensor scores = at::empty({A}, J.options().dtype(at::kDouble));
  if (A == 0) return scores;
  double* S = scores.data_ptr<double>();
  const int n = static_cast<int>(B);

  AT_DISPATCH_FLOATING_TYPES(J.scalar_type(), "jacob_cov_score_cpu", [&] {
    const scalar_t* Jp = J.const_data_ptr<scalar_t>();
    at::parallel_for(0, A, 1, [&](int64_t begin, int64_t end) {
      // Workspace for this task's range of architectures, reused for each of them.
      const auto f64 = at::TensorOptions().dtype(at::kDouble);
      at::Tensor X = at::empty({B, D}, f64);
      at::Tensor G = at::empty({B, B}, f64);
      std::vector<double> eig(B);
      int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
      double work_query = 0.0;
      at::native::lapackSyevd<double, double>('N', 'L', n, G.data_ptr<double>(), n, eig.data(), &work_query,
                                               lwork, nullptr, 0, &iwork_query, liwork, &info);
      std::vector<double> work(std::max<int64_t>(1, static_cast<int64_t>(work_query)));
      std::vector<int> iwork(std::max(1, iwork_query));
      const at::Tensor Xt = X.t();

      for (int64_t a = begin; a < end; ++a) {
        if (!normalised_rows(Jp + a * B * D, B, D, X.data_ptr<double>())) {
          S[a] = std::numeric_limits<double>::quiet_NaN();
          continue;
        }
        at::mm_out(G, X, Xt);
        double* g = G.data_ptr<double>();
        // np.corrcoef clips to [-1, 1]; rounding can put the diagonal a hair above 1.
        for (int64_t k = 0; k < B * B; ++k) g[k] = std::min(1.0, std::max(-1.0, g[k]));
        const SequentialLapack sequential;
        at::native::lapackSyevd<double, double>('N', 'L', n, g, n, eig.data(), work.data(),
                                                 static_cast<int>(work.size()), nullptr, 0, iwork.data(),
                                                 static_cast<int>(iwork.size()), &info);
        // A failed eigensolver (info != 0: no convergence; the input is finite here) gives NaN
        // for this architecture only, the rule on CUDA too, where raising would need a sync.
        if (info != 0) {
          S[a] = std::numeric_limits<double>::quiet_NaN();
          continue;
        }
        double total = 0.0;
        for (int64_t k = 0; k < B; ++k) total += eigenvalue_term(eig[k]);
        S[a] = -total;
      }
    });
  });
  return scores;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) { m.impl("jacob_cov_score", &jacob_cov_score_cpu); }

}  // namespace nwot_fast
