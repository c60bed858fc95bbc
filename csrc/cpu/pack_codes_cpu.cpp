// pack_codes on the CPU: (x > 0) packed 64 units per int64 word, one sample row per task.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../nwot.h"

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
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* row = xp + b * units;
        for (int64_t w = 0; w < W; ++w) {
          const int64_t first = 64 * w;
          const int64_t count = std::min<int64_t>(64, units - first);
          uint64_t word = 0;
          for (int64_t k = 0; k < count; ++k) {
            word |= static_cast<uint64_t>(static_cast<double>(row[first + k]) > 0.0) << k;
          }
          out[b * W + w] = static_cast<int64_t>(word);
        }
      }
    });
  });
  return codes;
}

TORCH_LIBRARY_IMPL(nwot_fast, CPU, m) { m.impl("pack_codes", &pack_codes_cpu); }

}  // namespace nwot_fast
