// Includes NWOT_VARIANT_HEADER once per CPU kernel variant (see cpu_isa.h): in namespace
// nwot_fast::cpu_default with the build's baseline flags, and on x86-64 GCC builds also in
// nwot_fast::cpu_avx2 and nwot_fast::cpu_avx512, each inside a `#pragma GCC target` region
// (a build with NWOT_CPU_ISA_ONLY: that one variant, and the other two names alias it).
// No include guard: each kernel file includes it once, after all of its library headers (a
// library header first seen inside a region would get wider instructions in its inline
// functions, which the linker may then pick for the whole library).
#ifndef NWOT_VARIANT_HEADER
#error "define NWOT_VARIANT_HEADER (the kernel header to build per variant) before including cpu_variants.h"
#endif

#include "cpu_isa.h"

// NWOT_VARIANT_ISA: the variant being compiled (0 default, 1 AVX2, 2 AVX-512), for the few
// places where a kernel header uses intrinsics.
#if NWOT_HAS_VARIANT(0)
#define NWOT_VARIANT_ISA 0
namespace nwot_fast {
namespace cpu_default {
#include NWOT_VARIANT_HEADER
}  // namespace cpu_default
}  // namespace nwot_fast
#undef NWOT_VARIANT_ISA
#endif

#if NWOT_X86_VARIANTS && NWOT_HAS_VARIANT(1)
#define NWOT_VARIANT_ISA 1
NWOT_TARGET_PUSH(NWOT_TARGET_AVX2)
namespace nwot_fast {
namespace cpu_avx2 {
#include NWOT_VARIANT_HEADER
}  // namespace cpu_avx2
}  // namespace nwot_fast
NWOT_TARGET_POP()
#undef NWOT_VARIANT_ISA
#endif

#if NWOT_X86_VARIANTS && NWOT_HAS_VARIANT(2)
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

// A build of one variant (NWOT_CPU_ISA_ONLY): the other namespaces name it, so that
// NWOT_CPU_DISPATCH compiles unchanged (kernel_isa() never picks another variant there).
#if NWOT_X86_VARIANTS && defined(NWOT_CPU_ISA_ONLY)
namespace nwot_fast {
#if NWOT_CPU_ISA_ONLY == 1
namespace cpu_default = cpu_avx2;
namespace cpu_avx512 = cpu_avx2;
#elif NWOT_CPU_ISA_ONLY == 2
namespace cpu_default = cpu_avx512;
namespace cpu_avx2 = cpu_avx512;
#else
namespace cpu_avx2 = cpu_default;
namespace cpu_avx512 = cpu_default;
#endif
}  // namespace nwot_fast
#endif

#undef NWOT_VARIANT_HEADER
