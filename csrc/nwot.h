// nwot_fast compiled operators: entry points shared by the CPU and CUDA kernels.
//
// Every operator is registered once in nwot.cpp (TORCH_LIBRARY(nwot_fast, m)); each backend
// file adds its implementations with TORCH_LIBRARY_IMPL. Shapes use A = architectures,
// B = samples (batch), D = input features, W = 64-bit code words.
#pragma once

// What the operators use, not <ATen/ATen.h> (every ATen function, 7.6 s of parsing per
// translation unit, against 1.9 s for <ATen/core/Tensor.h>; bench/RESULTS.md, "Only the ATen
// headers the operators use").
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

// Element functions shared by the CPU and CUDA kernels.
#ifdef __CUDACC__
#define NWOT_HOST_DEVICE __host__ __device__
#else
#define NWOT_HOST_DEVICE
#endif

namespace nwot_fast {

// The eigenvalue offset of the NASWOT jacob_cov score (Mellor et al. 2020).
constexpr double kEigEps = 1e-5;

// jacob_cov_score(J [A, B, D] float32|float64) -> S [A] float64.
//   Per architecture: rows centred and normalised, B x B correlation in float64 (np.corrcoef
//   semantics, clipped to [-1, 1]), symmetric eigenvalues l,
//   S = -sum(log(l + 1e-5) + 1 / (l + 1e-5)). A zero-variance row (all entries equal) or a
//   row with a NaN / infinite entry makes the correlation undefined, and an eigensolver that
//   does not converge gives no eigenvalues: S[a] = NaN for that architecture only (CPU and CUDA).
at::Tensor jacob_cov_score_cpu(const at::Tensor& J);

// pack_codes(x [B, ...] floating|bool) -> int64 [B, W], W = ceil(units / 64):
//   bit k of word w is (x.flatten(1)[:, 64 w + k] > 0); padding bits are 0.
at::Tensor pack_codes_cpu(const at::Tensor& x);

// hamming_kernel(codes int64 [A, B, W], multiplicity int64 [A, W], units int64 [A])
//   -> K int64 [A, B, B], K[a, i, j] = units[a] - sum_w multiplicity[a, w] *
//   popcount(codes[a, i, w] ^ codes[a, j, w]): the number of (unit, hook) pairs on which
//   samples i and j agree, i.e. sum over hooks of c c^T + (1 - c)(1 - c)^T.
at::Tensor hamming_kernel_cpu(const at::Tensor& codes, const at::Tensor& multiplicity, const at::Tensor& units);

// logdet_score(K [A, B, B] int64|float64) -> [A] float64: log|det K| by LU with partial
//   pivoting in float64 (sign ignored), exactly where that LU's error bound fails; -inf
//   exactly when K is singular, decided exactly (exact_det.h: rows scaled by powers of two
//   to integers); NaN where K[a] has a NaN or infinite entry. The same decisions with and
//   without fused multiply-add (NWOT_CPU_ARITHMETIC=fused runs the GPU's on the CPU).
at::Tensor logdet_score_cpu(const at::Tensor& K);

// hook_logdet_score(codes, multiplicity, units) -> [A] float64: hamming_kernel then
//   logdet_score in one call, without materialising the int64 K.
at::Tensor hook_logdet_score_cpu(const at::Tensor& codes, const at::Tensor& multiplicity, const at::Tensor& units);

// avg_pool3x3(x [N, C, H, W] float32|float64) -> [N, C, H, W]: AvgPool2d(3, stride 1, padding 1,
//   count_include_pad=False), bitwise equal to ATen's NCHW CPU kernel; avg_pool3x3_backward
//   (grad of the output) -> grad of the input, bitwise equal to ATen's avg_pool2d_backward.
at::Tensor avg_pool3x3_cpu(const at::Tensor& x);
at::Tensor avg_pool3x3_backward_cpu(const at::Tensor& grad);
//   Dense channels-last input: the same, channels-last output, bitwise equal to ATen's
//   channels-last kernels.

// batch_norm_train(x [N, P*C, H, W] float32|float64, parts P) -> (y: P tensors [N, C, H, W],
//   invstd [P*C] float64): BatchNorm2d in train mode with weight 1 and bias 0, y = (x - mean) *
//   invstd per channel, batch statistics (biased variance, eps 1e-5) summed in float64; y[p] is
//   a dense channels-last tensor of channels p*C .. p*C + C - 1 of the normalised x.
// batch_norm_train_backward(grad: P tensors, y: P tensors, invstd) -> grad_x [N, P*C, H, W]
//   channels-last: invstd * (grad - mean(grad) - y * mean(grad * y)) per channel.
std::tuple<std::vector<at::Tensor>, at::Tensor> batch_norm_train_cpu(const at::Tensor& x, int64_t parts);
at::Tensor batch_norm_train_backward_cpu(at::TensorList grad, at::TensorList y, const at::Tensor& invstd);

// relu_gather(x [N, C, H, W] float32|float64, index int64 [K] or None) -> [N, K, H, W]
//   contiguous: out[:, k] = relu(x[:, index[k]]) (None: k), with ATen's CPU relu (clamp_min(v, 0):
//   NaN and -0.0 kept), i.e. F.relu(x.index_select(1, index)) bitwise. Any strides.
at::Tensor relu_gather_cpu(const at::Tensor& x, const std::optional<at::Tensor>& index);

// scatter_channels_(dest [N, Cd, H, W], dest_index int64 [K] or None, src [N, Cs, H, W],
//   src_index int64 [K] or None, relu_out [N, K, H, W] or None, accumulate) -> (), in place:
//   for every k, v = src[:, src_index[k]] (None: k), v = (relu_out[:, k] <= 0 ? 0 : v) when
//   relu_out is given (ATen's threshold_backward(v, relu_out, 0)), then
//   dest[:, dest_index[k]] = v, or dest[:, dest_index[k]] + v when accumulate (index_copy_ /
//   index_add_ bitwise). dest_index entries must be distinct (the CPU kernel checks; the CUDA
//   kernel writes each destination from one thread only when they are). One dtype
//   (float32|float64), any strides.
void scatter_channels_cpu(const at::Tensor& dest, const std::optional<at::Tensor>& dest_index, const at::Tensor& src,
                          const std::optional<at::Tensor>& src_index, const std::optional<at::Tensor>& relu_out,
                          bool accumulate);

// build_info() -> "key=value;..." with torch (version built against), cuda (version or
// "none"), cusolver, backends ("cpu" or "cpu,cuda"), eigensolver, openmp, cpu_kernels (the CPU
// kernel variant in use: default, avx2 or avx512) and cpu_kernels_built; read by
// nwot_fast/_ext.py.
std::string build_info();

#ifdef WITH_CUDA
// Defined in cuda/*_cuda.cu; used by build_info().
std::string cuda_build_info();
#endif

// ---------------------------------------------------------------------------------------------
// Argument checks shared by every backend; the Python wrappers and fake kernels (ops.py) say
// the same words.

inline void check_jacobian(const at::Tensor& J) {
  TORCH_CHECK(J.dim() == 3, "J must be 3-D [archs, batch, features], got ", J.dim(), "-D");
  TORCH_CHECK(J.scalar_type() == at::kFloat || J.scalar_type() == at::kDouble,
              "J must be float32 or float64, got ", J.scalar_type());
  TORCH_CHECK(J.size(1) >= 2, "J must have at least 2 samples per architecture (batch >= 2), got batch ",
              J.size(1));
  TORCH_CHECK(J.size(2) >= 1, "J must have at least 1 feature, got ", J.size(2));
}

inline void check_activations(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "x must be at least 2-D [batch, units...], got ", x.dim(), "-D");
  TORCH_CHECK(x.is_floating_point() || x.scalar_type() == at::kBool,
              "x must be a floating-point or bool tensor, got ", x.scalar_type());
}

inline void check_codes(const at::Tensor& codes, const at::Tensor& multiplicity, const at::Tensor& units) {
  TORCH_CHECK(codes.dim() == 3, "codes must be 3-D [archs, batch, words], got ", codes.dim(), "-D");
  TORCH_CHECK(codes.scalar_type() == at::kLong, "codes must be int64 (packed bits), got ", codes.scalar_type());
  TORCH_CHECK(multiplicity.dim() == 2, "multiplicity must be 2-D [archs, words], got ", multiplicity.dim(), "-D");
  TORCH_CHECK(multiplicity.scalar_type() == at::kLong, "multiplicity must be int64, got ",
              multiplicity.scalar_type());
  TORCH_CHECK(units.dim() == 1, "units must be 1-D [archs], got ", units.dim(), "-D");
  TORCH_CHECK(units.scalar_type() == at::kLong, "units must be int64, got ", units.scalar_type());
  TORCH_CHECK(multiplicity.size(0) == codes.size(0) && multiplicity.size(1) == codes.size(2),
              "multiplicity must have shape [archs, words] = [", codes.size(0), ", ", codes.size(2),
              "] to match codes ", codes.sizes(), ", got ", multiplicity.sizes());
  TORCH_CHECK(units.size(0) == codes.size(0), "units must have shape [archs] = [", codes.size(0),
              "] to match codes ", codes.sizes(), ", got ", units.sizes());
  TORCH_CHECK(multiplicity.device() == codes.device(), "multiplicity must be on the same device as codes (",
              codes.device(), "), got ", multiplicity.device());
  TORCH_CHECK(units.device() == codes.device(), "units must be on the same device as codes (", codes.device(),
              "), got ", units.device());
}

inline void check_kernel_matrix(const at::Tensor& K) {
  TORCH_CHECK(K.dim() == 3, "K must be 3-D [archs, batch, batch], got ", K.dim(), "-D");
  TORCH_CHECK(K.size(1) == K.size(2), "K must be square in its last two dims [archs, batch, batch], got ",
              K.sizes());
  TORCH_CHECK(K.scalar_type() == at::kLong || K.scalar_type() == at::kDouble, "K must be int64 or float64, got ",
              K.scalar_type());
}

inline void check_channel_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D [batch, channels, height, width], got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

// An optional channel index: 1-D int64 on `ref`'s device; returns its length, or `whole` when
// absent. The values are checked against `bound` by the kernels (CPU: TORCH_CHECK; CUDA: assert).
inline int64_t check_channel_index(const std::optional<at::Tensor>& index, const char* name, const at::Tensor& ref,
                                   int64_t whole) {
  if (!index.has_value()) return whole;
  const at::Tensor& i = *index;
  TORCH_CHECK(i.dim() == 1, name, " must be 1-D [channels], got ", i.dim(), "-D");
  TORCH_CHECK(i.scalar_type() == at::kLong, name, " must be int64, got ", i.scalar_type());
  TORCH_CHECK(i.device() == ref.device(), name, " must be on the same device as its tensor (", ref.device(),
              "), got ", i.device());
  return i.size(0);
}

// The arguments of scatter_channels_; returns K, the channels moved.
inline int64_t check_scatter_channels(const at::Tensor& dest, const std::optional<at::Tensor>& dest_index,
                                      const at::Tensor& src, const std::optional<at::Tensor>& src_index,
                                      const std::optional<at::Tensor>& relu_out) {
  check_channel_tensor(dest, "dest");
  check_channel_tensor(src, "src");
  TORCH_CHECK(src.scalar_type() == dest.scalar_type(), "src must have the dtype of dest (", dest.scalar_type(),
              "), got ", src.scalar_type());
  TORCH_CHECK(src.device() == dest.device(), "src must be on the same device as dest (", dest.device(), "), got ",
              src.device());
  TORCH_CHECK(src.size(0) == dest.size(0) && src.size(2) == dest.size(2) && src.size(3) == dest.size(3),
              "src must match dest in batch, height and width: dest ", dest.sizes(), ", src ", src.sizes());
  const int64_t k_dest = check_channel_index(dest_index, "dest_index", dest, dest.size(1));
  const int64_t k_src = check_channel_index(src_index, "src_index", src, src.size(1));
  TORCH_CHECK(k_dest == k_src, "dest_index and src_index must move as many channels (None: all of dest / src): ",
              k_dest, " into dest ", dest.sizes(), ", ", k_src, " from src ", src.sizes());
  if (relu_out.has_value()) {
    const at::Tensor& r = *relu_out;
    check_channel_tensor(r, "relu_out");
    TORCH_CHECK(r.scalar_type() == dest.scalar_type(), "relu_out must have the dtype of dest (", dest.scalar_type(),
                "), got ", r.scalar_type());
    TORCH_CHECK(r.device() == dest.device(), "relu_out must be on the same device as dest (", dest.device(),
                "), got ", r.device());
    TORCH_CHECK(r.size(0) == dest.size(0) && r.size(1) == k_dest && r.size(2) == dest.size(2) &&
                    r.size(3) == dest.size(3),
                "relu_out must have shape [", dest.size(0), ", ", k_dest, ", ", dest.size(2), ", ", dest.size(3),
                "] (the channels moved), got ", r.sizes());
  }
  return k_dest;
}

// ATen's CPU relu (clamp_min(v, 0)): NaN and -0.0 pass unchanged.
template <typename scalar_t>
NWOT_HOST_DEVICE inline scalar_t relu_value(scalar_t v) {
  return v < scalar_t(0) ? scalar_t(0) : v;
}

// ATen's threshold_backward(grad, out, 0): the gradient where the ReLU output is above 0 (or NaN).
template <typename scalar_t>
NWOT_HOST_DEVICE inline scalar_t relu_grad_value(scalar_t grad, scalar_t out) {
  return out <= scalar_t(0) ? scalar_t(0) : grad;
}

inline double eigenvalue_term(double l) {
  const double v = l + kEigEps;
  return std::log(v) + 1.0 / v;
}

}  // namespace nwot_fast
