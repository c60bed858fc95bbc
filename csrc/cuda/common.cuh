// Helpers shared by the CUDA kernels of nwot_fast.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>  // TORCH_CUSOLVER_CHECK, TORCH_CUDABLAS_CHECK (with the library's error text)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../nwot.h"

namespace nwot_fast {

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace nwot_fast
