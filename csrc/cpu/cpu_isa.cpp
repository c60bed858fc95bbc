// The CPU kernel variant of this process (cpu_isa.h): ATen's capability, never above what the
// CPU reports for the instruction sets a variant was compiled with.
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "cpu_isa.h"

namespace nwot_fast {
namespace cpu {
namespace {

// The best variant whose instruction sets the CPU (and the OS, for the AVX-512 state) supports.
Isa best_supported() {
#if NWOT_X86_VARIANTS
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
#endif
  return Isa::Default;
}

// ATen's choice for its own kernels: the best the CPU supports, or what ATEN_CPU_CAPABILITY
// says (read once by ATen; an invalid value is ignored with a warning). ATen takes a valid
// value at its word, even one above what the CPU can run: hence the minimum with
// best_supported() below.
Isa aten_capability() {
  const std::string capability = at::get_cpu_capability();  // "DEFAULT", "AVX2", "AVX512", ...
  if (capability == "AVX512") return Isa::Avx512;
  if (capability == "AVX2") return Isa::Avx2;
  return Isa::Default;
}

// The variant this process may use at most: ATen's choice, never above what the CPU supports.
Isa allowed() {
  const Isa isa = std::min(aten_capability(), best_supported());
  return NWOT_X86_VARIANTS ? isa : Isa::Default;
}

// The variant the kernels run: the allowed one, or a one-variant build's variant
// (NWOT_CPU_ISA_ONLY), which kernel_isa() refuses above the allowed one.
Isa chosen() {
#if NWOT_X86_VARIANTS && defined(NWOT_CPU_ISA_ONLY)
  return static_cast<Isa>(NWOT_CPU_ISA_ONLY);
#else
  return allowed();
#endif
}

// chosen(), refused where it is above allowed(). A first-use build holds the variant its
// machine's processes choose, and its cache key names that variant, so another choice finds
// another build; this one only runs here when ATEN_CPU_CAPABILITY names more than the CPU has
// (ATen then says AVX-512, the CPU lacks it): refused, since it may hold instructions this CPU
// lacks.
Isa checked() {
  const Isa isa = chosen();
  const Isa limit = allowed();
  TORCH_CHECK(isa <= limit, "nwot_fast: this first-use build of the operators holds only the ", isa_name(isa),
              " CPU kernels, and this process may use at most ", isa_name(limit),
              " (what the CPU supports, capped by ATEN_CPU_CAPABILITY); set ATEN_CPU_CAPABILITY to at most ",
              isa_name(limit), ", or install an ahead-of-time build (pip install --no-build-isolation .), which "
              "holds every variant");
  return isa;
}

}  // namespace

Isa kernel_isa() {
  // Decided once; a refusal throws from the initialiser, so every call raises it again.
  static const Isa isa = checked();
  return isa;
}

const char* kernel_isa_report() {
  static const bool usable = chosen() <= allowed();
  return usable ? isa_name(chosen()) : "none";
}

bool avx512_popcount() {
#if NWOT_X86_VARIANTS
  static const bool yes = kernel_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512vpopcntdq");
  return yes;
#else
  return false;
#endif
}

bool has_popcnt() {
#if NWOT_X86_VARIANTS
  static const bool yes = __builtin_cpu_supports("popcnt");
  return yes;
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "default";
  }
}

std::string compiled_isas() {
#if NWOT_X86_VARIANTS && defined(NWOT_CPU_ISA_ONLY)
  return isa_name(static_cast<Isa>(NWOT_CPU_ISA_ONLY));
#else
  return NWOT_X86_VARIANTS ? "default,avx2,avx512" : "default";
#endif
}

}  // namespace cpu
}  // namespace nwot_fast
