// Helpers shared by the CUDA kernels of nwot_fast.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../nwot.h"

namespace nwot_fast {

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#define NWOT_CUSOLVER_CHECK(expr)                                                                    \
  do {                                                                                               \
    cusolverStatus_t nwot_status = (expr);                                                           \
    TORCH_CHECK(nwot_status == CUSOLVER_STATUS_SUCCESS, #expr " failed with cusolverStatus_t ",      \
                static_cast<int>(nwot_status));                                                      \
  } while (0)

#define NWOT_CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                               \
    cublasStatus_t nwot_status = (expr);                                                             \
    TORCH_CHECK(nwot_status == CUBLAS_STATUS_SUCCESS, #expr " failed with cublasStatus_t ",          \
                static_cast<int>(nwot_status));                                                      \
  } while (0)

}  // namespace nwot_fast
