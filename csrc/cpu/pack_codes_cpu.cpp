// pack_codes on the CPU: (x > 0) packed 64 units per int64 word, one sample row per task. The
// loop (pack_codes_kernels.h) is built for the baseline, AVX2 and AVX-512 and chosen at run
// time (cpu_isa.h); the bits do not depend on the variant.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../nwot.h"

#define NWOT_VARIANT_HEADER "pack_codes_kernels.h"
#include "cpu_variants.h"

namespace nwot_fast {

at::Tensor pack_codes_cpu(const at::Tensor& x_in) {
  check_activations(x_in);
  TORCH_CHECK(x_in.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0);
  const int64_t units = B == 0 ? 0 : x.numel() / B;
  const int64_t W = (units + 63) / 64;
  at::Tensor codes = at::empty({B, W}, x.options().dtype(at::kLong));
  if (B == 0 || W == 0) return codes;
  int64_t* out = codes.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "pack_codes_cpu", [&] {
    NWOT_CPU_DISPATCH(pack_rows<scalar_t>)(x.const_data_ptr<scalar_t>(), B, units, W, out);
  });
  return codes;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) { m.impl("pack_codes", &pack_codes_cpu); }

}  // namespace nwot_fast
