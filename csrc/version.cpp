// Build information that nwot_fast/_ext.py compares with the running torch before using _C.
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <sstream>
#include <string>

#include "cpu/cpu_isa.h"
#include "nwot.h"

#define NWOT_STR2(x) #x
#define NWOT_STR(x) NWOT_STR2(x)

namespace nwot_fast {

std::string build_info() {
  std::ostringstream s;
#ifdef NWOT_TORCH_VERSION
  // The full version string (with its local tag), passed by setup.py / CMakeLists.txt.
  s << "torch=" << NWOT_STR(NWOT_TORCH_VERSION);
#else
  s << "torch=" << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
#endif
#ifdef WITH_CUDA
  s << ";backends=cpu,cuda;" << cuda_build_info();
#else
  s << ";backends=cpu;cuda=none";
#endif
  s << ";openmp=" <<
#ifdef _OPENMP
      "yes";
#else
      "no";
#endif
  // The CPU kernel variant in use (cpu/cpu_isa.h) and the variants built.
  s << ";cpu_kernels=" << cpu::kernel_isa_report() << ";cpu_kernels_built=" << cpu::compiled_isas();
  return s.str();
}

}  // namespace nwot_fast
