// Includes NWOT_VARIANT_HEADER once per CPU kernel variant (see cpu_isa.h): in namespace
// nwot_fast::cpu_default with the build's baseline flags, and on x86-64 GCC builds also in
// nwot_fast::cpu_avx2 and nwot_fast::cpu_avx512, each inside a `#pragma GCC target` region.
// No include guard: each kernel file includes it once, after all of its library headers (a
// library header first seen inside a region would get wider instructions in its inline
// functions, which the linker may then pick for the whole library).
#ifndef NWOT_VARIANT_HEADER
#error "define NWOT_VARIANT_HEADER (the kernel header to build per variant) before including cpu_variants.h"
#endif

#include "cpu_isa.h"

// NWOT_VARIANT_ISA: the variant being compiled (0 default, 1 AVX2, 2 AVX-512), for the few
// places where a kernel header uses intrinsics.
#define NWOT_VARIANT_ISA 0
namespace nwot_fast {
namespace cpu_default {
#include NWOT_VARIANT_HEADER
}  // namespace cpu_default
}  // namespace nwot_fast
#undef NWOT_VARIANT_ISA

#if NWOT_X86_VARIANTS
#define NWOT_VARIANT_ISA 1
NWOT_TARGET_PUSH(NWOT_TARGET_AVX2)
namespace nwot_fast {
namespace cpu_avx2 {
#include NWOT_VARIANT_HEADER
}  // namespace cpu_avx2
}  // namespace nwot_fast
NWOT_TARGET_POP()
#undef NWOT_VARIANT_ISA

#define NWOT_VARIANT_ISA 2
NWOT_TARGET_PUSH(NWOT_TARGET_AVX512)
namespace nwot_fast {
namespace cpu_avx512 {
#include NWOT_VARIANT_HEADER
}  // namespace cpu_avx512
}  // namespace nwot_fast
NWOT_TARGET_POP()
#undef NWOT_VARIANT_ISA
#endif

#undef NWOT_VARIANT_HEADER
