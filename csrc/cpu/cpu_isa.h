// Run-time choice of the CPU kernel variant: every hot CPU kernel is compiled three times, for
// the baseline x86-64 (SSE2), for AVX2 + FMA and for AVX-512 (F, BW, DQ, VL: ATen's AVX512
// capability), and the variant of the running CPU is chosen once per process.
//
// The choice follows ATen's capability dispatch (at::get_cpu_capability(): what the CPU and the
// OS support, capped by ATEN_CPU_CAPABILITY=default|avx2|avx512), so that one environment
// variable forces ATen's kernels and ours alike; a variant is never chosen unless the CPU has
// every instruction set it was compiled for (checked here with __builtin_cpu_supports: ATen
// itself honours ATEN_CPU_CAPABILITY=avx512 on a CPU without AVX-512).
//
// How a file builds its variants (no per-file compiler flags, so that setup.py, the first-use
// build and CMake compile the same sources with the same flags): the hot loops live in a
// header without include guard (e.g. batch_norm_kernels.h), written against the namespace it is
// included into; the kernel file defines NWOT_VARIANT_HEADER and includes cpu_variants.h, which
// includes that header once per variant, each time in its own namespace (cpu_default, cpu_avx2,
// cpu_avx512) and, for the x86 variants, inside a `#pragma GCC target` region. Only functions
// defined in the region (including lambdas) get the wider instructions; the library headers are
// included before any region, so their inline functions stay baseline code (one definition for
// the whole library). The entry points pick the namespace with NWOT_CPU_DISPATCH.
//
// The variants compute the same results bit for bit: they vectorise across independent
// channels, pixels or words only, and floating multiply-adds are never contracted (the build
// passes -ffp-contract=off), so the order of every rounding step is the baseline's.
#pragma once

#include <cstdint>
#include <string>

namespace nwot_fast {
namespace cpu {

// Ordered: a variant may run on any CPU that supports a greater or equal one.
enum class Isa : int { Default = 0, Avx2 = 1, Avx512 = 2 };

// The variant the CPU kernels use in this process (decided on the first call; a one-variant
// build whose variant this process may not run raises, see NWOT_CPU_ISA_ONLY below).
Isa kernel_isa();

// kernel_isa()'s name, or "none" where it would refuse (build_info: reported, not raised).
const char* kernel_isa_report();

// "default", "avx2" or "avx512" (the spelling of ATEN_CPU_CAPABILITY).
const char* isa_name(Isa isa);

// Whether the AVX-512 variants may also use VPOPCNTQ (AVX512_VPOPCNTDQ: Ice Lake and later,
// Zen 4), for the popcounts of the Hamming kernel. False unless kernel_isa() is Avx512.
bool avx512_popcount();

// Whether the CPU has POPCNT (the baseline variant's Hamming kernel uses it when it does; the
// x86-64 baseline does not promise it, every AVX2 CPU has it).
bool has_popcnt();

// The variants compiled into this build, best last ("default" or "default,avx2,avx512").
std::string compiled_isas();

}  // namespace cpu
}  // namespace nwot_fast

// GCC on x86-64 builds the AVX2 and AVX-512 variants; other compilers and architectures build
// the baseline only (kernel_isa() is then always Default).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NWOT_X86_VARIANTS 1
#else
#define NWOT_X86_VARIANTS 0
#endif

// NWOT_CPU_ISA_ONLY (0, 1 or 2, set by a first-use build, nwot_fast/_jit.py): only that variant
// is compiled, the one the processes of the machine that builds it choose (ATen's capability
// there); the other two namespaces are aliases of it (cpu_variants.h), and kernel_isa() refuses
// to run it where the CPU or ATEN_CPU_CAPABILITY forbids it. Unset (ahead-of-time builds, which
// may run on any x86-64 CPU): all three.
#if NWOT_X86_VARIANTS && defined(NWOT_CPU_ISA_ONLY)
#define NWOT_HAS_VARIANT(isa) (NWOT_CPU_ISA_ONLY == (isa))
#elif NWOT_X86_VARIANTS
#define NWOT_HAS_VARIANT(isa) 1
#else
#define NWOT_HAS_VARIANT(isa) ((isa) == 0)
#endif

// The target strings of the variants (GCC's spelling), used by cpu_variants.h.
#define NWOT_TARGET_AVX2 "avx2,fma,popcnt"
#define NWOT_TARGET_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,popcnt,prefer-vector-width=512"
// `#pragma GCC target` does not expand macros; _Pragma of a stringified, expanded argument does.
#define NWOT_PRAGMA_STRING(x) _Pragma(#x)
#define NWOT_PRAGMA(x) NWOT_PRAGMA_STRING(x)
#define NWOT_TARGET_PUSH(isa) _Pragma("GCC push_options") NWOT_PRAGMA(GCC target(isa))
#define NWOT_TARGET_POP() _Pragma("GCC pop_options")
// The Hamming kernel's VPOPCNTQ function in the AVX-512 variant (called only when
// cpu::avx512_popcount() is true).
#define NWOT_TARGET_AVX512_POPCOUNT NWOT_TARGET_AVX512 ",avx512vpopcntdq"

// NWOT_CPU_DISPATCH(fn)(args...): fn of the variant in use (fn must exist in all three
// namespaces, compiled or aliased; in baseline-only builds the other two are never referenced).
#if NWOT_X86_VARIANTS
#define NWOT_CPU_DISPATCH(fn)                                                         \
  (::nwot_fast::cpu::kernel_isa() == ::nwot_fast::cpu::Isa::Avx512 ? cpu_avx512::fn \
   : ::nwot_fast::cpu::kernel_isa() == ::nwot_fast::cpu::Isa::Avx2 ? cpu_avx2::fn   \
                                                                      : cpu_default::fn)
#else
#define NWOT_CPU_DISPATCH(fn) (cpu_default::fn)
#endif
